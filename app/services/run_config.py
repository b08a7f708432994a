"""A run's hyperparameters: validated once here, with ranges a person can act on."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_LEARNING_RATE = 5e-4


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(DEFAULT_LEARNING_RATE, gt=0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    eval_split: float = Field(0.1, ge=0, le=0.5)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    block_size: int = Field(128, ge=16, le=1024)
    # Early stopping on an evaluation metric (needs an eval set): off unless patience is set.
    early_stopping_patience: int | None = Field(None, ge=1, le=1000)
    early_stopping_metric: str = Field("eval_loss", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    early_stopping_mode: Literal["min", "max"] = "min"
    # Checkpoint retention: keep the newest N and the best by a metric; None keeps all.
    keep_last_checkpoints: int | None = Field(None, ge=1, le=1000)
    keep_best_metric: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    keep_best_mode: Literal["min", "max"] = "min"
