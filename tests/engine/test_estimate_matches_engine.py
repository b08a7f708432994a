"""The launch estimate's model sizes are the engine's: same parameter count, same shape."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from app.services.estimate import ARCHITECTURES
from workers.engine import KNOWN_BASE_MODELS
from workers.engine.scratch import scratch_config


def test_every_scratch_model_has_an_estimate() -> None:
    assert set(ARCHITECTURES) == set(KNOWN_BASE_MODELS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_estimate_counts_the_parameters_of_the_model_the_engine_builds(name: str) -> None:
    spec = KNOWN_BASE_MODELS[name]
    arch = ARCHITECTURES[name]
    assert (arch.n_layer, arch.n_head, arch.n_embd) == (spec.n_layer, spec.n_head, spec.n_embd)
    assert arch.kind == spec.architecture
    config = scratch_config(
        name, vocab_size=arch.vocab_size, block_size=64, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    assert arch.parameters(64) == model.num_parameters()
