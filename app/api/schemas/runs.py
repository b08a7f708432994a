"""Runs: launch, estimate, read, and a run's metrics, events and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime
from app.services.runs.config import RunConfig


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    validation_dataset_id: int | None = None
    dataset_version_id: int | None = Field(
        None, description="A ready version of the dataset; default: its newest ready version."
    )
    base_model: str | None = Field(
        None,
        description="Default: a LoRA of the packaged SmolLM2 for chat, prompt/completion and "
        "instruction data, scratch-tiny for the rest. Hyperparameters not given follow the "
        "base's preset (learning rate, epochs, sequence length, method).",
    )
    name: str | None = Field(None, max_length=255)
    suffix: str | None = Field(None, max_length=40)
    config: RunConfig = Field(default_factory=RunConfig)
    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="Place in the workspace's queue (docs/queue.md)."
    )


def _priority_name(value: Any) -> Any:
    from app.services.runs.queue import priority_name

    return priority_name(value) if isinstance(value, int) else value


class RunEstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int | None = None
    dataset_version_id: int | None = None
    validation_dataset_id: int | None = None
    base_model: str | None = None  # as for a launch: chosen by the data, else scratch-tiny
    config: RunConfig = Field(default_factory=RunConfig)


class RunEstimate(BaseModel):
    base_model: str
    parameters: int | None
    weights_bytes: int | None
    gradients_bytes: int | None
    optimizer_bytes: int | None
    activations_bytes: int | None
    total_bytes: int | None
    device_bytes: int | None
    device_label: str
    fits: bool | None
    warning: str | None
    suggestions: list[str]
    total_steps: int | None
    tokens_per_second: float | None
    duration_s: float | None
    duration_source: str | None = None
    calibrating: bool = False
    calibration_error: str | None = None
    train_examples: int | None = Field(
        None, description="Examples an epoch trains on: conversations, texts or packed blocks."
    )
    steps_exact: bool = Field(
        True, description="False when packed blocks were counted from bytes (~4 a token)."
    )
    plan_warnings: list[str] = Field(
        default_factory=list, description="Why the plan is unlikely to learn (too few steps)."
    )
    preset: dict[str, Any] = Field(
        default_factory=dict, description="The base's preset for fields not given."
    )


class RunRead(ORM):
    id: int
    name: str
    base_model: str
    dataset_id: int
    validation_dataset_id: int | None
    dataset_version_id: int | None = None
    config: dict[str, Any]
    suffix: str | None
    status: str
    error: str | None
    error_detail: str | None = None  # the traceback's last lines of a failed run
    step: int
    total_steps: int | None
    attempts: int = 0
    stop_requested: bool = False
    # Paused (`POST /api/v1/runs/{id}/pause`, the run page's Pause, OpenAI's job pause): `status`
    # stays the lifecycle's (`cancelled` once stopped); this says the stop is meant to be resumed.
    paused: bool = False
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    priority: Annotated[str, BeforeValidator(_priority_name)] = "normal"
    worker_host: str | None = None


class RunPage(BaseModel):
    items: list[RunRead]
    total: int


class MetricPointRead(BaseModel):
    step: int
    values: dict[str, float]


class RunEventRead(ORM):
    id: int
    level: str
    message: str
    created_at: UtcDateTime


class CheckpointRead(ORM):
    id: int
    step: int
    is_final: bool
    metrics: dict[str, Any]
    created_at: UtcDateTime
    deleted_at: UtcDateTime | None = None  # removed from disk by the retention policy
