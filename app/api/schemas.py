"""Request and response shapes of the native JSON API, one group per resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import Role
from app.services.run_config import RunConfig


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- users, tokens, workspaces ------------------------------------------------------------
class FirstAdminCreate(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LoginRequest(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class UserRead(ORM):
    id: int
    email: str
    is_admin: bool


class SessionRead(BaseModel):
    """A signed-in session; cookie-authenticated writes send `csrf_token` as X-CSRF-Token."""

    user: UserRead
    csrf_token: str


class UserCreate(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    is_admin: bool = False


class WorkspaceRead(ORM):
    id: int
    name: str
    slug: str


class WorkspaceWithRole(WorkspaceRead):
    role: Role


class WorkspaceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class MemberRead(BaseModel):
    user_id: int
    email: str
    role: Role


class MemberCreate(BaseModel):
    email: str = Field(max_length=320)
    role: Role = Role.viewer


class MeRead(BaseModel):
    user: UserRead
    workspace: WorkspaceWithRole
    workspaces: list[WorkspaceWithRole]


class TokenCreate(BaseModel):
    name: str = Field("api", min_length=1, max_length=100)


class TokenRead(ORM):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret; shown only once.")


# --- datasets -----------------------------------------------------------------------------
class DatasetRead(ORM):
    id: int
    name: str
    filename: str
    format: str
    purpose: str
    sha256: str
    size_bytes: int
    num_rows: int
    created_at: datetime


class DatasetDetail(DatasetRead):
    preview: list[dict[str, Any]]
    # Set on upload answers: `duplicate` when the same bytes were already uploaded to this
    # workspace (the existing dataset is returned, nothing new stored).
    duplicate: bool = False
    message: str | None = None
    version_id: int | None = Field(None, description="The dataset's newest ready version.")
    detection: dict[str, Any] | None = None
    rejected_rows: int = 0
    problems: list[str] = Field(default_factory=list)


class DatasetVersionRead(ORM):
    id: int
    dataset_id: int
    version: int
    parent_id: int | None
    schema_: str = Field(alias="schema", validation_alias="schema")
    sha256: str
    num_rows: int
    size_bytes: int
    recipe: dict[str, Any]
    report: dict[str, Any]
    status: str
    progress: float
    error: str | None
    created_at: datetime

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class PreviewRow(BaseModel):
    row: int
    data: dict[str, Any]


class DatasetPreview(BaseModel):
    version_id: int
    items: list[PreviewRow]
    offset: int
    limit: int
    has_more: bool
    query: str | None


class DatasetStats(BaseModel):
    version_id: int
    schema_: str = Field(alias="schema")
    num_rows: int
    stats: dict[str, Any]
    detection: dict[str, Any] | None = None

    model_config = ConfigDict(populate_by_name=True)


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    total_size: int = Field(ge=1, description="The file's size in bytes.")


class UploadRead(ORM):
    id: int
    filename: str
    total_size: int
    received: int
    status: str
    dataset_id: int | None
    created_at: datetime
    updated_at: datetime


# --- runs ---------------------------------------------------------------------------------
class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    validation_dataset_id: int | None = None
    dataset_version_id: int | None = Field(
        None, description="A ready version of the dataset; default: its newest ready version."
    )
    base_model: str = "scratch-tiny"
    name: str | None = Field(None, max_length=255)
    suffix: str | None = Field(None, max_length=40)
    config: RunConfig = Field(default_factory=RunConfig)


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
    step: int
    total_steps: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


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
    created_at: datetime


class CheckpointRead(ORM):
    id: int
    step: int
    is_final: bool
    metrics: dict[str, Any]
    created_at: datetime


# --- registry and deployments -------------------------------------------------------------
class ModelVersionRead(ORM):
    id: int
    registered_model_id: int
    version: int
    serving_name: str
    run_id: int | None
    lineage: dict[str, Any]
    created_at: datetime


class RegisteredModelRead(ORM):
    id: int
    name: str
    created_at: datetime
    versions: list[ModelVersionRead]


class DeploymentCreate(BaseModel):
    model_version_id: int


class DeploymentRead(ORM):
    id: int
    model_version_id: int
    serving_name: str
    status: str
    error: str | None
    created_at: datetime
