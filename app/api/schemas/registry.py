"""The model registry: models, versions, stages, tags, imports, exports, evaluations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime


class ModelVersionRead(ORM):
    id: int
    registered_model_id: int
    version: int
    serving_name: str
    run_id: int | None
    checkpoint_id: int | None = None
    lineage: dict[str, Any]
    created_at: UtcDateTime
    stage: str = "none"
    tags: list[str] = []
    source: str = "run"
    size_bytes: int | None = None
    content_sha256: str | None = None
    code_version: str | None = None


class RegisteredModelRead(ORM):
    id: int
    name: str
    created_at: UtcDateTime
    versions: list[ModelVersionRead]


class VersionRegister(BaseModel):
    # strict: JSON `true` is not checkpoint 1.
    checkpoint_id: int = Field(ge=1, le=2**31 - 1, strict=True)


class StageUpdate(BaseModel):
    stage: str = Field(max_length=20)
    reason: str | None = Field(default=None, max_length=500)


class StageChangeRead(ORM):
    id: int
    from_stage: str
    to_stage: str
    reason: str | None
    user_email: str | None = None
    created_at: UtcDateTime


class TagsUpdate(BaseModel):
    tags: list[str] = Field(max_length=50)


class ModelImportFromPath(BaseModel):
    name: str = Field(max_length=64)
    path: str = Field(max_length=1024)


class ExportCreate(BaseModel):
    kind: str = Field(default="onnx", max_length=20)
    quantize: bool = False  # onnx: also an int8 model
    quantization: str | None = Field(default=None, max_length=40)  # gguf: f16, q8_0, q4_k_m


class ExportRead(ORM):
    id: int
    model_version_id: int
    kind: str
    options: dict[str, Any]
    status: str
    progress: float
    size_bytes: int | None
    results: dict[str, Any]
    error: str | None
    created_at: UtcDateTime
    finished_at: UtcDateTime | None


class EvaluationCreate(BaseModel):
    dataset_id: int = Field(ge=1, le=2**31 - 1, strict=True)
    dataset_version_id: int | None = Field(default=None, ge=1, le=2**31 - 1, strict=True)
    max_rows: int = Field(default=200, ge=1, le=5000)
    max_new_tokens: int = Field(default=32, ge=1, le=256)
    prompts: list[str] | None = Field(default=None, max_length=10)


class JudgeEvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["pairwise", "rubric"] = "pairwise"
    rubric: str | None = Field(default=None, max_length=1000)
    max_votes: int = Field(default=200, ge=1, le=2000)
    versions: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="A match instead of the arena's votes: these two versions answer `prompts`.",
    )
    prompts: list[str] | None = Field(default=None, max_length=50)
    max_new_tokens: int = Field(default=64, ge=1, le=256)


class EvaluationRead(ORM):
    id: int
    model_version_id: int
    dataset_id: int | None
    dataset_sha256: str
    dataset_version_id: int | None
    kind: str = Field(description="`standard` or `harness` (lm-evaluation-harness tasks).")
    options: dict[str, Any]
    status: str
    progress: float
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    error: str | None
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
