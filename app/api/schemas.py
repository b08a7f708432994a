"""Request and response shapes of the native JSON API, one group per resource."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from app.db.models import Role
from app.services.runs.config import RunConfig


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# The database keeps naive UTC times; a bare "2026-11-23T16:26:23" is not an RFC 3339
# date-time (the schema's `format`), and a client would read it as local time. So every time
# the API answers carries its offset: "2026-11-23T16:26:23+00:00".
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


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


class UserAdminRead(UserRead):
    is_active: bool
    created_at: datetime


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_active: bool = Field(
        description="false disables the account: no sign-in, its sessions and tokens stop working"
    )


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(max_length=1024)


class WorkspaceAdminCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    owner_email: str = Field(max_length=320, description="the account that will own it")


class WorkspaceAdminRead(BaseModel):
    id: int
    name: str
    slug: str
    created_at: datetime
    members: int
    owners: list[str]


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


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


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
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None


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
    created_at: UtcDateTime


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
    created_at: UtcDateTime

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
    purpose: Literal["dataset", "model"] = Field(
        "dataset",
        description="dataset: completed by POST .../complete; model (a .zip of a Hugging Face "
        "folder or a .gguf file): completed by POST .../import-model",
    )


class UploadModelImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="the registered model's name")


class UploadRead(ORM):
    id: int
    filename: str
    total_size: int
    received: int
    status: str
    dataset_id: int | None
    created_at: UtcDateTime
    updated_at: UtcDateTime


# --- runs ---------------------------------------------------------------------------------
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


# --- registry and deployments -------------------------------------------------------------
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


# --- registry: registering, stages, tags, imports, exports, evaluations ------------------------
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


class AuditEventRead(ORM):
    id: int
    action: str = Field(description="`<resource>.<verb>`, e.g. `run.launch` (docs/trust.md).")
    actor_id: int | None
    actor_email: str | None = None
    target_type: str
    target_id: str
    detail: dict[str, Any]
    ip: str | None
    created_at: UtcDateTime


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next (older) page; null on the last page."
    )


# --- errors -------------------------------------------------------------------------------
class ApiError(BaseModel):
    """Every error of the native API (app/core/error_handlers.py), validation errors included."""

    detail: str = Field(description="What went wrong, in words a person can act on.")
    code: str | None = Field(default=None, description="A stable machine-readable code.")
    param: str | None = Field(default=None, description="The field at fault, if one is.")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape, answered by everything under /v1."""

    error: OpenAIErrorBody


_ERROR_WORDS = {
    400: "Invalid request",
    401: "Not signed in, or the token is invalid or revoked",
    403: "Not allowed (role too low, CSRF token or origin refused)",
    404: "Not found (or not in your workspace)",
    409: "Conflicts with the current state",
    413: "Request body over the upload limit",
    422: "A parameter or the body failed validation",
    429: "Too many attempts; retry later",
    503: "A dependency (inference server, broker) is unavailable; retry later",
}


def error_responses(model: type[BaseModel], codes: tuple[int, ...]) -> dict[int | str, Any]:
    """The error answers every route may give, declared once per router (the OpenAPI schema
    otherwise only names FastAPI's default 422, whose shape ours is not)."""
    return {code: {"model": model, "description": _ERROR_WORDS[code]} for code in codes}


API_ERRORS = error_responses(ApiError, (400, 401, 403, 404, 409, 413, 422, 429, 503))
OPENAI_ERRORS = error_responses(OpenAIError, (400, 401, 403, 404, 409, 413, 429, 503))


# --- the run queue and quotas (docs/queue.md) ---------------------------------------------
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


# --- sweeps (docs/sweeps.md) ----------------------------------------------------------------
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
