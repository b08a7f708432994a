"""Base models for a run: scratch configs, local/packaged/hub pretrained weights, LoRA and merge.

Pretrained bases come as a Hugging Face directory, a folder plus a .gguf file (de-quantised to
fp32 by transformers on load), or an `hf:` hub id, which is refused when the process is offline
(HF_HUB_OFFLINE) rather than left to time out on a download.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workers.engine.config import TrainConfig
from workers.engine.tokenizer import CHAT_TEMPLATE

# LoRA's target modules per model_type: the attention projections, as in the LoRA paper.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
}


# The tasks whose head predicts labels (per text, per token) and the Auto class that builds it.
LABELLED_TASKS: dict[str, Any] = {
    "classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
}


class HubUnavailable(RuntimeError):
    """A hub id was asked for on a worker that may not download."""


@dataclass(frozen=True)
class Source:
    """Where from_pretrained reads a pretrained base."""

    location: str  # a directory or a hub id
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def pretrained_source(config: TrainConfig) -> Source:
    if config.base_model_path is not None:
        if not config.base_model_path.exists():
            raise FileNotFoundError(f"base model folder not found: {config.base_model_path}")
        return Source(str(config.base_model_path), config.gguf_file)
    hub_id = config.hub_id
    if hub_id is None:
        raise ValueError(f"{config.base_model} is neither a scratch size nor a pretrained model")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubUnavailable(
            f"cannot download {hub_id}: this worker is offline (HF_HUB_OFFLINE is set); "
            "put the model in the models folder instead"
        )
    return Source(hub_id)


def load_pretrained_tokenizer(source: Source, max_length: int) -> PreTrainedTokenizerBase:
    """The base's own tokenizer, with a pad token and a chat template guaranteed.

    A base without a chat template (a plain pretrained LM) gets the scratch models' template:
    its role markers are then ordinary text the fine-tuning teaches.
    """
    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = max_length
    return tokenizer


def load_pretrained_model(
    config: TrainConfig,
    source: Source,
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str] | None,
) -> PreTrainedModel:
    kwargs: dict[str, Any] = {**source.kwargs(), "dtype": torch.float32}
    if config.method == "qlora":
        kwargs.update(quantization_kwargs())
    model: PreTrainedModel
    if task in LABELLED_TASKS:
        assert labels is not None
        model = LABELLED_TASKS[task].from_pretrained(
            source.location,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **kwargs,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if source.gguf_file:
        _forget_gguf_quantization(model)
    return model


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """transformers de-quantises GGUF weights to fp32 on load but keeps a GGUF "quantizer"
    marker, which makes the Trainer refuse to train and would be saved into config.json. The
    weights in memory are plain tensors, so the marker is dropped."""
    # torch types Module.__setattr__'s value as a Tensor or Module; it stores any value.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def quantization_kwargs() -> dict[str, Any]:
    """4-bit NF4 loading for QLoRA; only on CUDA with bitsandbytes installed."""
    if not torch.cuda.is_available():
        raise RuntimeError("QLoRA needs a CUDA GPU; this worker has none (use method lora)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "QLoRA needs the bitsandbytes package on the GPU worker (pip install bitsandbytes); "
            "use method lora meanwhile"
        )
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }


def lora_targets(model: PreTrainedModel, config: TrainConfig) -> list[str] | str:
    if config.lora_target_modules:
        return list(config.lora_target_modules)
    return LORA_TARGETS.get(model.config.model_type, "all-linear")


def apply_lora(model: PreTrainedModel, config: TrainConfig, task: str) -> Any:
    """Wrap the model so only the LoRA matrices (and a new classification head) train."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, lora_config(model, config, task))


def lora_config(model: PreTrainedModel, config: TrainConfig, task: str) -> Any:
    """The run's LoRA settings for this model (TRL's trainers take it as peft_config)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_targets(model, config),
        task_type={
            "classification": TaskType.SEQ_CLS,
            "token_classification": TaskType.TOKEN_CLS,
        }.get(task, TaskType.CAUSAL_LM),
        # GPT-2's projections are Conv1D, whose weight is stored transposed.
        fan_in_fan_out=model.config.model_type == "gpt2",
    )


def merged_model(model: Any, config: TrainConfig, source: Source | None, task: str) -> Any:
    """The LoRA model folded into plain weights, loadable with from_pretrained alone.

    A 4-bit (QLoRA) base cannot absorb the adapter exactly, so its adapter is merged into the
    base reloaded in full precision.
    """
    if config.method != "qlora" or source is None:
        return model.merge_and_unload()
    import tempfile

    from peft import PeftModel

    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir)
        auto = LABELLED_TASKS.get(task, AutoModelForCausalLM)
        extra: dict[str, Any] = {}
        if task in LABELLED_TASKS:
            extra = {
                "num_labels": model.config.num_labels,
                "id2label": model.config.id2label,
                "label2id": model.config.label2id,
            }
        base = auto.from_pretrained(
            source.location, dtype=torch.float32, **source.kwargs(), **extra
        )
        return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def describe(location: str, gguf_file: str | None = None) -> dict[str, Any]:
    """The engine's facts about a local model (what the web's catalog must agree with):
    parameters of the model built on the meta device, its model_type and context length."""
    from transformers import AutoModel

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model_config = AutoConfig.from_pretrained(location, **kwargs)
    with torch.device("meta"):
        model = AutoModel.from_config(model_config)
    return {
        "parameters": model.num_parameters(),
        "architecture": model_config.model_type,
        "context_length": getattr(model_config, "max_position_embeddings", None)
        or getattr(model_config, "n_positions", None),
    }
