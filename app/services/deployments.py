"""Deployments: model versions loaded in the inference process and reachable by name.

The web process only records and routes; the weights live in the inference server, which this
module drives through `inference_client`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload
from starlette.concurrency import run_in_threadpool

from app.core.errors import InvalidTransition, NotFound, ServiceUnavailable, ValidationFailed
from app.db.models import Deployment, DeploymentStatus, ModelVersion, Role
from app.services import artifacts, audit, base_models, inference_client, registry
from app.services.workspaces import WorkspaceContext, get_in_workspace


def inference_key(version: ModelVersion) -> str:
    """The name a version is loaded under in the inference server (globally unique)."""
    return f"mv-{version.id}"


@dataclass(frozen=True)
class ServingTarget:
    key: str
    path: str
    serving_name: str


def target_for_version(version: ModelVersion) -> ServingTarget:
    return ServingTarget(
        key=inference_key(version),
        path=str(artifacts.existing(version.storage_key)),
        serving_name=version.serving_name,
    )


def resolve_model(*, session: Session, ctx: WorkspaceContext, name: str) -> ServingTarget:
    """The version a `model` name in an OpenAI request means, deployed or not (loaded on demand)."""
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    if version is None:
        if name in base_models.CATALOG:
            raise ValidationFailed(
                f"{name} is a base architecture trained from scratch and has no weights to "
                "serve; fine-tune it first and use the resulting ft:... model",
                param="model",
            )
        raise NotFound(f"the model {name!r} does not exist in this workspace", param="model")
    return target_for_version(version)


def create(*, session: Session, ctx: WorkspaceContext, version_id: int) -> Deployment:
    ctx.require(Role.editor)
    version = registry.get_version_for_member(session=session, ctx=ctx, version_id=version_id)
    artifacts.existing(version.storage_key)
    deployment = session.scalar(
        select(Deployment).where(
            Deployment.model_version_id == version.id,
            Deployment.status != DeploymentStatus.stopped,
        )
    )
    if deployment is None:
        deployment = Deployment(
            workspace_id=ctx.workspace.id,
            model_version_id=version.id,
            status=DeploymentStatus.loading,
            created_by_id=ctx.user.id,
        )
        session.add(deployment)
    else:
        deployment.status = DeploymentStatus.loading
        deployment.error = None
    session.flush()
    audit.record(
        session=session,
        actor=ctx,
        action="deployment.create",
        target_type="deployment",
        target_id=deployment.id,
        detail={"model_version_id": version.id, "serving_name": version.serving_name},
    )
    session.commit()
    return deployment


async def deploy(*, session: Session, ctx: WorkspaceContext, version_id: int) -> Deployment:
    """One click: record the deployment and ask the inference server to load the version.

    If the server is down or refuses, the deployment is marked failed with the reason (never
    left "loading") and the caller gets a clear, retryable error.
    """
    deployment = await run_in_threadpool(create, session=session, ctx=ctx, version_id=version_id)
    target = target_for_version(deployment.model_version)
    try:
        await inference_client.ensure_loaded(target.key, target.path)
    except inference_client.InferenceUnavailable as exc:
        await run_in_threadpool(_mark_failed, session, deployment, str(exc))
        raise ServiceUnavailable(f"{exc}; deploy again once it is running") from exc
    except inference_client.InferenceError as exc:
        message = f"the inference server could not load {target.serving_name}: {exc.detail}"
        await run_in_threadpool(_mark_failed, session, deployment, message)
        if exc.status_code < 500:
            raise ValidationFailed(message) from exc
        raise ServiceUnavailable(message) from exc
    return deployment


def _mark_failed(session: Session, deployment: Deployment, error: str) -> None:
    deployment.status = DeploymentStatus.failed
    deployment.error = error
    session.commit()


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


def apply_server_status(
    *, session: Session, deployments: list[Deployment], loaded: list[dict] | None
) -> None:
    """Bring recorded statuses in line with what the inference server reports."""
    if loaded is None:
        return
    by_key = {entry["name"]: entry for entry in loaded}
    changed = False
    for deployment in deployments:
        if deployment.status == DeploymentStatus.stopped:
            continue
        entry = by_key.get(inference_key(deployment.model_version))
        if entry is None:
            status, error = DeploymentStatus.failed, "not loaded in the inference server"
            if deployment.status == DeploymentStatus.loading:
                continue
        else:
            status, error = DeploymentStatus(entry["status"]), entry.get("error")
        if deployment.status != status or deployment.error != error:
            deployment.status, deployment.error = status, error
            changed = True
    if changed:
        session.commit()


async def refresh_status(*, session: Session, deployments: list[Deployment]) -> None:
    """Ask the inference server what it holds and record it on these deployments."""
    loaded = await loaded_models()
    await run_in_threadpool(
        apply_server_status, session=session, deployments=deployments, loaded=loaded
    )


async def loaded_models() -> list[dict] | None:
    try:
        return await inference_client.list_loaded()
    except inference_client.InferenceUnavailable:
        return None


def mark_stopping(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    ctx.require(Role.editor)
    deployment = get_for_member(session=session, ctx=ctx, deployment_id=deployment_id)
    if deployment.status == DeploymentStatus.stopped:
        raise InvalidTransition(f"deployment {deployment_id} is already stopped")
    deployment.status = DeploymentStatus.stopped
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
    with contextlib.suppress(inference_client.InferenceUnavailable):
        await inference_client.unload(inference_key(deployment.model_version))
