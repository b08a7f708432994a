"""The training run's configuration: everything the engine needs, checked before any work."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import datacontract as contract
from workers.engine.data import SCHEMAS
from workers.engine.scratch import KNOWN_BASE_MODELS

DATA_FORMATS = (*SCHEMAS, "txt")
# The task each schema trains by default ("auto"), and the tasks it can feed: the data
# contract's (datacontract, docs/DATA_CONTRACT.md).
TASK_TYPES = contract.TASK_TYPES
DEFAULT_TASK = contract.DEFAULT_TASK
TASK_SCHEMAS = contract.TASK_SCHEMAS
SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METHODS = ("full", "lora", "qlora")
PREFERENCE_TASKS = contract.PREFERENCE_TASKS
DPO_LOSSES = ("sigmoid", "ipo")
# Each method's beta when none is given (TRL's defaults; SimPO's paper uses 2.0).
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}
LABEL_ALIGNMENTS = ("first", "all")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

MAX_DEVICES = 64
DEFAULT_CUDA_LOGGING_STEPS = 10

# A byte-level BPE needs its 256 byte symbols plus the special tokens before any merge.
MIN_VOCAB_SIZE = 300
MAX_VOCAB_SIZE = 65536


@dataclass(frozen=True)
class TrainConfig:
    """One training run, as the Celery task builds it from the database row.

    Paths are the run's own artifact folders; the engine writes only under output_dir.
    """

    output_dir: Path  # checkpoints in output_dir/checkpoints/checkpoint-{step}, model in /final
    train_file: Path  # canonical JSONL rows of one schema (DATA_CONTRACT.md), or plain .txt
    train_format: str  # a schema name, or "txt"
    validation_file: Path | None = None
    validation_format: str | None = None  # None: same as train_format
    # A scratch size (KNOWN_BASE_MODELS), or any name for a pretrained base found at
    # base_model_path (a HF directory, or the folder of gguf_file), or "hf:org/model" (hub).
    base_model: str = "scratch-tiny"
    base_model_path: Path | None = None
    gguf_file: str | None = None
    task_type: str = "auto"  # "auto" (from the schema) or one of TASK_TYPES
    learning_rate: float = 5e-4
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int | None = None  # when set, overrides epochs
    eval_split: float = 0.1  # share of train held out when there is no validation_file (0 = none)
    seed: int = 42
    block_size: int = 128
    eval_steps: int | None = None  # None: about 10 evaluations per run
    save_steps: int | None = None  # None: about 4 checkpoints per run
    resume_from: Path | None = None  # a checkpoint dir; restores optimizer, scheduler and RNG
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # Processes of one data-parallel run on this machine (one per GPU on CUDA, gloo processes
    # on the CPU). Above 1 the worker launches the run through torchrun; train() itself trains
    # in whatever world torchrun's environment describes.
    devices: int = 1
    # Optimizer steps between training logs (loss, learning rate, grad norm, throughput): the
    # only steps that read a device tensor back. None: every step on the CPU, where a read
    # costs nothing, and every DEFAULT_CUDA_LOGGING_STEPS on a GPU.
    logging_steps: int | None = None
    vocab_size: int = 4096
    cpu_threads: int | None = None  # torch threads on CPU; None: all available CPUs but one
    # None keeps every checkpoint: each one reported through on_checkpoint stays on disk for
    # the registry. A number deletes the oldest beyond it (Trainer's save_total_limit).
    keep_checkpoints: int | None = None
    lr_scheduler: str = "cosine"
    warmup_steps: int | None = None  # when set, overrides warmup_ratio
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 turns clipping off
    precision: str = "auto"  # auto: bf16 where the GPU supports it natively, else fp32
    method: str = "full"  # "full" | "lora" | "qlora" (4-bit base, CUDA + bitsandbytes)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None  # None: per architecture (models.py)
    generation_eval_rows: int = 32  # seq2seq: eval rows generated for BLEU/ROUGE at the end
    # token_classification: which sub-words of a word carry its label in training, "first"
    # (the others are ignored) or "all" (the others continue it as I-X).
    label_alignment: str = "first"
    # Early stopping: end the run when this evaluation metric has not improved (lower for
    # "min", higher for "max") for `patience` evaluations. None: off.
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "eval_loss"
    early_stopping_mode: str = "min"
    # Preference tuning (tasks dpo, orpo, simpo, kto; workers/engine/preference.py).
    beta: float | None = None  # None: DEFAULT_BETA of the task
    dpo_loss: str = "sigmoid"  # "sigmoid" (DPO) | "ipo"
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    # Logit distillation (workers/engine/distill.py): a teacher sharing the student's tokenizer
    # (a HF folder, or the folder of teacher_gguf_file); the loss mixes the task's cross-entropy
    # with the KL to the teacher's distribution softened by the temperature.
    teacher_path: Path | None = None
    teacher_gguf_file: str | None = None
    distill_temperature: float = 2.0
    distill_weight: float = 0.5  # share of the KL term (0: plain training, 1: KL only)

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.resolved_task, 0.1)

    @property
    def is_scratch(self) -> bool:
        return self.base_model in KNOWN_BASE_MODELS

    @property
    def hub_id(self) -> str | None:
        return self.base_model[3:] if self.base_model.startswith("hf:") else None

    @property
    def resolved_task(self) -> str:
        if self.task_type != "auto":
            return self.task_type
        return DEFAULT_TASK.get(self.train_format, "causal_lm")

    def validate(self) -> None:
        """Raise ValueError listing every out-of-range value, in words a user can act on."""
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.train_format not in DATA_FORMATS:
            problems.append(
                f"train_format must be one of {', '.join(DATA_FORMATS)} (got {self.train_format!r})"
            )
        if self.validation_format is not None and self.validation_format not in DATA_FORMATS:
            problems.append(
                f"validation_format must be one of {', '.join(DATA_FORMATS)} "
                f"(got {self.validation_format!r})"
            )
        spec = KNOWN_BASE_MODELS.get(self.base_model)
        if spec is None and self.base_model_path is None and self.hub_id is None:
            problems.append(
                f"unknown base model {self.base_model!r}; available: "
                + ", ".join(sorted(KNOWN_BASE_MODELS))
                + ", a local model folder, or hf:organisation/model"
            )
        problems += self._task_problems(spec)
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            problems.append(
                f"learning rate must be greater than 0 and at most 1 (got {self.learning_rate})"
            )
        if not 1 <= self.batch_size <= 4096:
            problems.append(f"batch size must be between 1 and 4096 (got {self.batch_size})")
        if self.max_steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            problems.append(f"epochs must be greater than 0 (got {self.epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max steps must be at least 1 (got {self.max_steps})")
        if not 0 <= self.eval_split <= 0.5:
            problems.append(f"eval split must be between 0 and 0.5 (got {self.eval_split})")
        if self.seed < 0:
            problems.append(f"seed must not be negative (got {self.seed})")
        max_block = spec.context_length if spec else 32768
        if not 8 <= self.block_size <= max_block:
            problems.append(
                f"block size must be between 8 and {max_block} for {self.base_model} "
                f"(got {self.block_size})"
            )
        if self.early_stopping_mode not in ("min", "max"):
            problems.append(
                f"early stopping mode must be min or max (got {self.early_stopping_mode!r})"
            )
        for name in (
            "eval_steps",
            "save_steps",
            "keep_checkpoints",
            "cpu_threads",
            "early_stopping_patience",
            "logging_steps",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name.replace('_', ' ')} must be at least 1 (got {value})")
        if not 1 <= self.devices <= MAX_DEVICES:
            problems.append(f"devices must be between 1 and {MAX_DEVICES} (got {self.devices})")
        if not _DEVICE_PATTERN.match(self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if not MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE:
            problems.append(
                f"vocabulary size must be between {MIN_VOCAB_SIZE} and {MAX_VOCAB_SIZE} "
                f"(got {self.vocab_size})"
            )
        return problems

    def _task_problems(self, spec: object) -> list[str]:
        problems: list[str] = []
        task = self.resolved_task
        if self.task_type != "auto" and self.task_type not in TASK_TYPES:
            problems.append(f"task type must be auto or one of {', '.join(TASK_TYPES)}")
        elif self.train_format in DATA_FORMATS and self.train_format not in TASK_SCHEMAS[task]:
            problems.append(
                f"a {task} run needs {' or '.join(TASK_SCHEMAS[task])} rows "
                f"(the dataset is {self.train_format})"
            )
        if spec is not None and task in TASK_TYPES and task not in spec.tasks:  # type: ignore[attr-defined]
            problems.append(f"{self.base_model} cannot be trained for {task}")
        if self.lr_scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {', '.join(SCHEDULERS)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(f"warm-up steps must not be negative (got {self.warmup_steps})")
        if not 0 <= self.warmup_ratio <= 0.5:
            problems.append(f"warm-up ratio must be between 0 and 0.5 (got {self.warmup_ratio})")
        if not 1 <= self.gradient_accumulation_steps <= 1024:
            problems.append("gradient accumulation must be between 1 and 1024 steps")
        if not 0 <= self.weight_decay <= 1:
            problems.append(f"weight decay must be between 0 and 1 (got {self.weight_decay})")
        if not 0 <= self.max_grad_norm <= 1000:
            problems.append(
                f"gradient clipping must be between 0 and 1000 (got {self.max_grad_norm})"
            )
        if self.label_alignment not in LABEL_ALIGNMENTS:
            problems.append(f"label alignment must be one of {', '.join(LABEL_ALIGNMENTS)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}")
        elif self.method != "full" and spec is not None:
            if getattr(spec, "architecture", "") == "lstm":
                problems.append("LoRA needs a transformer; train the LSTM with method full")
            elif self.method == "qlora":
                problems.append("QLoRA quantises a pretrained base; scratch models train in full")
        if self.beta is not None and not (math.isfinite(self.beta) and 0 < self.beta <= 100):
            problems.append(f"beta must be greater than 0 and at most 100 (got {self.beta})")
        if self.dpo_loss not in DPO_LOSSES:
            problems.append(f"DPO loss must be one of {', '.join(DPO_LOSSES)}")
        if not 0 <= self.simpo_gamma <= 100:
            problems.append(f"SimPO gamma must be between 0 and 100 (got {self.simpo_gamma})")
        for name in ("kto_desirable_weight", "kto_undesirable_weight"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                problems.append(f"{name.replace('_', ' ')} must be above 0, at most 100")
        if not 0 < self.distill_temperature <= 20:
            problems.append(
                "distillation temperature must be above 0, at most 20 "
                f"(got {self.distill_temperature})"
            )
        if not 0 <= self.distill_weight <= 1:
            problems.append(
                f"distillation weight must be between 0 and 1 (got {self.distill_weight})"
            )
        if self.teacher_path is not None and task not in ("causal_lm", "sft"):
            problems.append(f"logit distillation trains causal_lm or sft runs, not {task}")
        if task == "kto" and self.batch_size < 2:
            problems.append("KTO needs a batch size of at least 2 (its KL term pairs answers)")
        if not 1 <= self.lora_r <= 512:
            problems.append(f"LoRA r must be between 1 and 512 (got {self.lora_r})")
        if not 1 <= self.lora_alpha <= 4096:
            problems.append(f"LoRA alpha must be between 1 and 4096 (got {self.lora_alpha})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(
                f"LoRA dropout must be at least 0 and below 1 (got {self.lora_dropout})"
            )
        return problems

    def logging_interval(self, on_gpu: bool) -> int:
        """Steps between training logs: logging_steps, or the default for the device."""
        if self.logging_steps is not None:
            return self.logging_steps
        return DEFAULT_CUDA_LOGGING_STEPS if on_gpu else 1

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.output_dir / "final"
