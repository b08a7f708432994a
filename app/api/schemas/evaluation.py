"""Cross-validation and arena: requests and replies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import UtcDateTime
from app.services.runs.config import RunConfig

ID = Field(ge=1, le=2**31 - 1, strict=True)


class CrossValidationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int = ID
    dataset_version_id: int | None = Field(default=None, ge=1, le=2**31 - 1, strict=True)
    base_model: str | None = Field(default=None, max_length=255)
    name: str | None = Field(default=None, max_length=200)
    config: RunConfig = Field(default_factory=RunConfig, description="Every fold run's config.")
    k: int = Field(default=5, ge=2, le=10, description="Number of folds.")
    stratify: bool | None = Field(
        default=None,
        description="Keep each fold's label proportions; default: yes for classification data.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class CrossValidationFold(BaseModel):
    fold: int | None
    run_id: int
    status: str
    dataset_version_id: int | None
    metrics: dict[str, float]


class CrossValidationRead(BaseModel):
    id: int
    name: str
    dataset_id: int
    source_version_id: int
    base_model: str
    k: int
    stratified: bool
    seed: int
    status: str = Field(description="running, succeeded, partial (some folds failed) or failed")
    folds: list[CrossValidationFold]
    metrics: dict[str, dict[str, float]] = Field(
        description="Per metric over the succeeded folds: mean, std (sample, n-1) and folds."
    )
    final_fit_run_id: int | None
    final_fit_status: str | None
    registered_version_id: int | None
    created_at: UtcDateTime


class CrossValidationRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fold: int = Field(ge=1, le=10)


class ArenaVoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=50)
    model_a: str = Field(min_length=1, max_length=255)
    model_b: str = Field(min_length=1, max_length=255)
    answer_a: str = Field(max_length=20_000)
    answer_b: str = Field(max_length=20_000)
    winner: Literal["a", "b", "tie", "both_bad"]


class ArenaVoteRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    messages: list[dict[str, Any]]
    model_a: str
    model_b: str
    version_a_id: int | None
    version_b_id: int | None
    answer_a: str
    answer_b: str
    winner: str
    created_at: UtcDateTime
