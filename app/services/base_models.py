"""The base models this server offers for new runs (the engine owns their definitions)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import ValidationFailed


@dataclass(frozen=True)
class BaseModel:
    name: str
    description: str
    parameters: str
    context_length: int


# The web process never imports the engine (it would load torch), so the catalog it shows is
# kept here; tests/engine/test_catalog_matches_engine.py fails if the two ever disagree.
CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel(
            "scratch-nano",
            "The smallest GPT-2-style decoder (2 layers, width 64), for smoke tests and very "
            "small data; trains in seconds on a CPU.",
            "≈395K",
            512,
        ),
        BaseModel(
            "scratch-tiny",
            "GPT-2-style decoder (4 layers, width 192) trained from scratch with a byte-level "
            "BPE tokenizer fitted on your data; minutes on a CPU.",
            "≈2.8M",
            1024,
        ),
        BaseModel(
            "scratch-small",
            "GPT-2-style decoder (6 layers, width 384) trained from scratch; meant for a GPU.",
            "≈12.6M",
            1024,
        ),
    )
}


def require_known(name: str) -> BaseModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown base model {name!r}; available: {', '.join(sorted(CATALOG))}", param="model"
        ) from None
