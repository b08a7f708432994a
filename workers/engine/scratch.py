"""Named model sizes trained from scratch (GPT-2-style and an LSTM): no download needed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from transformers import GPT2Config, PretrainedConfig

import datacontract as contract
from workers.engine.lstm import LstmConfig

# The vocabulary size a listing assumes; a run's real size is that of the tokenizer it trains.
DEFAULT_VOCAB_SIZE = 4096


@dataclass(frozen=True)
class BaseModelSpec:
    """One named from-scratch size, as the web lists it and as the trainer builds it."""

    name: str
    description: str
    n_layer: int
    n_head: int
    n_embd: int
    context_length: int  # the longest block_size this size accepts (GPT-2's n_positions)
    architecture: str = "gpt2"  # "gpt2" | "lstm" (n_embd is then the LSTM's width)
    license: str | None = None  # your own weights: no licence to state
    tasks: tuple[str, ...] = (
        "causal_lm",
        "sft",
        "classification",
        "seq2seq",
        "token_classification",
        *contract.PREFERENCE_TASKS,
    )

    def parameter_count(
        self, vocab_size: int = DEFAULT_VOCAB_SIZE, n_positions: int | None = None
    ) -> int:
        """Exact parameter count of the built model (input and output embeddings are tied)."""
        d = self.n_embd
        if self.architecture == "lstm":
            return vocab_size * d + self.n_layer * 4 * (2 * d * d + 2 * d)
        positions = self.context_length if n_positions is None else n_positions
        # Per block: two LayerNorms (4d), qkv (3d²+3d), attention out (d²+d), MLP (8d²+5d).
        per_layer = 12 * d * d + 13 * d
        return vocab_size * d + positions * d + self.n_layer * per_layer + 2 * d

    @property
    def parameters(self) -> int:
        """Parameter estimate at the default vocabulary and full context, for listings."""
        return self.parameter_count()

    @property
    def parameters_label(self) -> str:
        """A short human figure such as "≈2.8M"."""
        count = self.parameters
        if count >= 1_000_000:
            return f"≈{count / 1_000_000:.1f}M"
        return f"≈{count / 1_000:.0f}K"


_SPECS = (
    BaseModelSpec(
        name="scratch-nano",
        description="The smallest GPT-2-style decoder (2 layers, width 64), for smoke tests "
        "and very small data; trains in seconds on a CPU.",
        n_layer=2,
        n_head=2,
        n_embd=64,
        context_length=512,
    ),
    BaseModelSpec(
        name="scratch-tiny",
        description="GPT-2-style decoder (4 layers, width 192) trained from scratch with a "
        "byte-level BPE tokenizer fitted on your data; minutes on a CPU.",
        n_layer=4,
        n_head=4,
        n_embd=192,
        context_length=1024,
    ),
    BaseModelSpec(
        name="scratch-small",
        description="GPT-2-style decoder (6 layers, width 384) trained from scratch; "
        "meant for a GPU.",
        n_layer=6,
        n_head=6,
        n_embd=384,
        context_length=1024,
    ),
    BaseModelSpec(
        name="scratch-lstm",
        description="A 2-layer LSTM language model (width 256) trained from scratch: the "
        "recurrent baseline to measure the GPT-2-style sizes against.",
        n_layer=2,
        n_head=0,
        n_embd=256,
        context_length=1024,
        architecture="lstm",
        tasks=("causal_lm", "sft", "seq2seq"),
    ),
)

KNOWN_BASE_MODELS: Mapping[str, BaseModelSpec] = MappingProxyType({s.name: s for s in _SPECS})


def scratch_config(
    name: str,
    *,
    vocab_size: int,
    block_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> PretrainedConfig:
    """The GPT2Config for a named size, sized to the run's tokenizer and block size.

    n_positions is the block size rather than the size's maximum context: a position
    embedding row that training never visits would only be noise at inference time.
    """
    try:
        spec = KNOWN_BASE_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(KNOWN_BASE_MODELS))
        raise ValueError(f"unknown base model {name!r}; available: {known}") from None
    if block_size > spec.context_length:
        raise ValueError(
            f"block_size {block_size} exceeds {name}'s context length of {spec.context_length}"
        )
    if spec.architecture == "lstm":
        return LstmConfig(
            vocab_size=vocab_size,
            hidden_size=spec.n_embd,
            num_hidden_layers=spec.n_layer,
            max_position_embeddings=block_size,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        # No dropout when pretraining (nanoGPT's default too): short runs rarely overfit,
        # and dropout would slow the fall of the loss the user is watching.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
