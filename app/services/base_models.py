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


CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel(
            "scratch-tiny",
            "GPT-2-style decoder trained from scratch with a BPE tokenizer fitted on your data",
            "≈3M",
            128,
        ),
        BaseModel(
            "scratch-nano",
            "The smallest GPT-2-style decoder, for smoke tests and very small data",
            "≈0.5M",
            128,
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
