"""A from-scratch LSTM language model: the recurrent baseline beside the GPT-2-style sizes.

It is a `PreTrainedModel`, so the HF Trainer trains it, checkpoints it as safetensors and
`AutoModelForCausalLM.from_pretrained` loads it back (once this module is imported: importing
it registers the "llmide-lstm" model type with the Auto classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput

MODEL_TYPE = "llmide-lstm"


class LstmConfig(PretrainedConfig):
    """Embedding width, LSTM layers and hidden size; input and output embeddings are tied."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.dropout = dropout
        # An LSTM has no position table; this is the longest block the run trained on.
        self.max_position_embeddings = max_position_embeddings
        # Not a field of transformers' config dataclass: its __init__ would only pass it on to
        # __post_init__, which sets it like this.
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)


class LstmForCausalLM(PreTrainedModel, GenerationMixin):
    """Embedding → stacked LSTM → tied output projection; next-token cross-entropy."""

    config_class = LstmConfig
    base_model_prefix = "lstm_lm"
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}
    # Typed as the get/set_*_embeddings hooks trade them: any module.
    embed: nn.Module
    lm_head: nn.Module

    def __init__(self, config: LstmConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lstm = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            num_layers=config.num_hidden_layers,
            dropout=config.dropout if config.num_hidden_layers > 1 else 0.0,
            batch_first=True,
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Untyped in transformers; mypy's untyped_calls_exclude matches a method by the class
        # it is called on (this one), not the class that defines it.
        self.post_init()  # type: ignore[no-untyped-call]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Embedding, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(
        self, input_ids: torch.Tensor, **kwargs: Any
    ) -> dict[str, Any]:
        # No cache: the whole prefix is re-read each step (a baseline, not a fast server).
        return {"input_ids": input_ids}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutput:
        hidden, _ = self.lstm(self.embed(input_ids))
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits)


def lstm_parameter_count(vocab_size: int, hidden_size: int, num_hidden_layers: int) -> int:
    """Exact parameters: tied embedding, and per layer 4 gates of two weights and two biases."""
    h = hidden_size
    return vocab_size * h + num_hidden_layers * 4 * (2 * h * h + 2 * h)


AutoConfig.register(MODEL_TYPE, LstmConfig, exist_ok=True)
AutoModelForCausalLM.register(LstmConfig, LstmForCausalLM, exist_ok=True)
