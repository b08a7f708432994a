"""The run queue and quotas (docs/queue.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.runs import RunRead


class RunPriorityUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Literal["low", "normal", "high"]


class RunMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    direction: Literal["up", "down"]


class QueuedRunRead(RunRead):
    position: int | None = Field(None, description="1 = next of this workspace to start.")
    running_for_s: float | None = None


class WorkerMachineRead(BaseModel):
    host: str
    runs: list[QueuedRunRead]
    other_workspaces_runs: int


class QuotasRead(BaseModel):
    concurrent_runs: int | None
    gpu_hours_per_month: float | None
    active_runs: int
    gpu_hours_used: float


class QuotasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict: JSON `true` is not a quota of 1.
    concurrent_runs: int | None = Field(
        None, ge=1, le=10_000, strict=True, description="None: no limit."
    )
    gpu_hours_per_month: float | None = Field(
        None, ge=0, le=1e7, strict=True, description="None: no limit; 0 refuses every launch."
    )


class QueueRead(BaseModel):
    waiting: list[QueuedRunRead]
    active: list[QueuedRunRead]
    machines: list[WorkerMachineRead]
    slots: int
    fleet_active: int
    waiting_reason: str | None
    quotas: QuotasRead
