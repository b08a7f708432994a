"""Sweeps and their trials (docs/sweeps.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime
from app.services.runs.config import RunConfig


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    base_model: str = "scratch-tiny"
    name: str | None = Field(None, max_length=255)
    config: RunConfig = Field(
        default_factory=RunConfig, description="Every trial's config before its sampled values."
    )
    search_space: dict[str, dict[str, Any]] = Field(
        description='Per hyperparameter {"values": [...]} or {"low": x, "high": y, "log": bool}.'
    )
    method: Literal["grid", "random", "tpe"] = "grid"
    metric: str = Field("eval_loss", min_length=1, max_length=64)
    direction: Literal["minimize", "maximize"] = "minimize"
    max_trials: int = Field(10, ge=1, le=200)
    parallelism: int = Field(1, ge=1, le=32)
    prune: bool = True
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SweepTrialRead(BaseModel):
    run_id: int
    trial: int | None
    params: dict[str, Any]
    status: str
    value: float | None
    step: int


class SweepRead(ORM):
    id: int
    name: str
    dataset_id: int
    base_model: str
    base_config: dict[str, Any]
    search_space: dict[str, Any]
    method: str
    metric: str
    direction: str
    max_trials: int
    parallelism: int
    prune: bool
    seed: int
    status: str
    error: str | None
    best_run_id: int | None
    created_at: UtcDateTime
    finished_at: UtcDateTime | None


class SweepDetail(SweepRead):
    trials: list[SweepTrialRead] = []
    best: SweepTrialRead | None = None
    budget: int = 0


class SweepPage(BaseModel):
    items: list[SweepRead]
