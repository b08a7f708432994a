"""Deployments: serving settings, predictions and serving statistics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime


class DeploymentSettingsIn(BaseModel):
    """Serving settings; every field optional so PATCH changes only what it names."""

    model_config = ConfigDict(extra="forbid")

    replicas: int | None = Field(None, ge=1, le=8)
    max_batch_size: int | None = Field(None, ge=1, le=64)
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)


class DeploymentCreate(DeploymentSettingsIn):
    model_version_id: int
    name: str | None = Field(
        None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
    )


class DeploymentRedeploy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_version_id: int


class DeploymentPredict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="a text or up to 64 texts")


class DeploymentStats(BaseModel):
    requests: int = Field(0, description="every request routed to it, refused ones included")
    rejected: int = Field(0, description="refused with a 4xx (validation, limits)")
    errors: int = Field(0, description="failed with a 5xx")
    cancelled: int = Field(0, description="the client went away before the end")
    completion_tokens: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    tokens_per_s: float | None = None


class DeploymentRead(ORM):
    id: int
    name: str
    model_version_id: int
    serving_name: str
    status: str
    error: str | None
    created_at: UtcDateTime
    replicas: int
    max_batch_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    pending_model_version_id: int | None
    url: str
    # The engine serving it: "llamacpp", "vllm" or "transformers", and why it was chosen;
    # None while unknown (not loaded yet, inference server unreachable).
    backend: str | None = None
    backend_reason: str | None = None
    stats: DeploymentStats | None = None
