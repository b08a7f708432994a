"""Embeddings: loading a model for them and pooling its last hidden states into unit vectors.

Encoders (BERT-type such as the packaged MiniLM, and the encoder inside a fine-tuned
classifier) and decoders (causal LMs, GGUF included) are both served: each input's last hidden
states are averaged over its real tokens (mean pooling, what sentence-transformers' MiniLM was
trained with) and scaled to length 1, as OpenAI's embeddings are. Embedding models are
registry entries like any deployment (loaded in the background, one load at a time), always on
transformers: llama.cpp and vLLM are loaded for generation, not for hidden states.
"""

from __future__ import annotations

from typing import Any

from workers.inference.backends import CAUSAL_SUFFIXES, OWN_ARCHITECTURES, model_facts
from workers.inference.registry import Kind, ModelSource, pick_device

BATCH = 16  # inputs per forward pass: bounded memory for a long list of long inputs


class EmbeddingRefused(ValueError):
    """An input the model cannot embed; `code`/`param` are OpenAI's when there is one."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


def load_embedder(source: ModelSource) -> tuple[Any, Any, str, int | None, Kind, list[str]]:
    """The model without its head (an encoder) or a causal LM whose hidden states are read."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    import workers.engine.lstm  # noqa: F401  (its Auto registration, as in registry)

    device, dtype = pick_device()
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    directory = str(source.directory)
    facts = model_facts(source.directory, source.gguf_file)
    causal = source.gguf_file is not None or any(
        a.endswith(CAUSAL_SUFFIXES) or a in OWN_ARCHITECTURES for a in facts.architectures
    )
    if source.gguf_file:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=source.gguf_file, **{dtype_key: dtype}
        )
    elif causal:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(
            directory, use_safetensors=True, **{dtype_key: dtype}
        )
    else:
        # A classifier's folder loads as its base encoder (the head's weights are left out).
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModel.from_pretrained(directory, use_safetensors=True, **{dtype_key: dtype})
    # transformers wraps `to` with functools.wraps, whose typeshed type binds no self: the
    # device would be checked as the model argument.
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    return model, tokenizer, device, context, "embedding", []


def token_ids(entry: Any, inputs: list[str] | list[list[int]]) -> list[list[int]]:
    """Each input as the model's token ids; texts are tokenized with its special tokens,
    token arrays are taken as given (checked against the vocabulary)."""
    tokenizer = entry.tokenizer
    if tokenizer is None:
        raise EmbeddingRefused(f"model {entry.name!r} was unloaded")
    vocab = len(tokenizer)
    ids: list[list[int]] = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            row = list(tokenizer(item, add_special_tokens=True)["input_ids"])
        else:
            row = list(item)
            bad = next((t for t in row if not 0 <= t < vocab), None)
            if bad is not None:
                raise EmbeddingRefused(
                    f"input[{index}] holds token id {bad}, outside this model's vocabulary of "
                    f"{vocab} tokens",
                    param="input",
                )
        if not row:
            raise EmbeddingRefused(f"input[{index}] has no tokens", param="input")
        if entry.context_length and len(row) > entry.context_length:
            raise EmbeddingRefused(
                f"input[{index}] is {len(row)} tokens; this model's maximum context length is "
                f"{entry.context_length} tokens",
                code="context_length_exceeded",
                param="input",
            )
        ids.append(row)
    return ids


def embed(entry: Any, ids: list[list[int]]) -> list[list[float]]:
    """Blocking: mean-pooled, L2-normalised last hidden states of each token-id row."""
    import torch

    model, tokenizer = entry.model, entry.tokenizer
    if model is None or tokenizer is None:
        raise EmbeddingRefused(f"model {entry.name!r} was unloaded")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors: list[list[float]] = []
    for start in range(0, len(ids), BATCH):
        rows = ids[start : start + BATCH]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=entry.device)
        mask = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], device=entry.device
        )
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            states = getattr(out, "hidden_states", None)
            hidden = states[-1] if states else None
        if hidden is None:
            raise EmbeddingRefused(
                f"model {entry.name!r} does not expose hidden states to pool into embeddings"
            )
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        vectors.extend(pooled.cpu().tolist())
    return vectors
