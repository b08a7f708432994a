"""What a person does to a deployment that the inference server must follow: deploy, scale,
redeploy, stop. Each records the change first (`deployments`, committed) and then asks the
server; a refusal or an unreachable server is recorded on the deployment and answered as a
clear, retryable error, never left "loading"."""

from __future__ import annotations

import contextlib
from typing import Unpack

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.errors import ServiceUnavailable, ValidationFailed
from app.db.models import Deployment, DeploymentStatus
from app.services.serving import deployments, inference_client, reconcile
from app.services.serving.deployments import SettingsChanges
from app.services.serving.targets import (
    DeploymentSettings,
    ServingTarget,
    inference_key,
    target_for_version,
)
from app.services.workspaces.access import WorkspaceContext


async def _load(target: ServingTarget, session: Session, deployment: Deployment) -> None:
    """Ask the server to load (or rescale) `target`; a refusal marks the deployment failed."""
    try:
        await inference_client.ensure_loaded(target.key, target.path, **target.load_options)
    except inference_client.InferenceUnavailable as exc:
        await run_in_threadpool(deployments.mark_failed, session, deployment, str(exc))
        raise ServiceUnavailable(f"{exc}; deploy again once it is running") from exc
    except inference_client.InferenceError as exc:
        message = f"the inference server could not load {target.serving_name}: {exc.detail}"
        await run_in_threadpool(deployments.mark_failed, session, deployment, message)
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
        deployments.create,
        session=session,
        ctx=ctx,
        version_id=version_id,
        name=name,
        settings=settings,
    )
    await _load(target_for_version(deployment.model_version, deployment), session, deployment)
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
        deployments.update_settings,
        session=session,
        ctx=ctx,
        deployment_id=deployment_id,
        **changes,
    )
    if deployment.status != DeploymentStatus.failed:
        await _load(target_for_version(deployment.model_version, deployment), session, deployment)
    return deployment


async def redeploy(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, version_id: int
) -> Deployment:
    """Load `version_id` beside the live version; the name switches once it is ready.

    The old version keeps serving meanwhile; once the new one is ready the deployment points at
    it and the old one is unloaded after a drain delay (requests already routed to it finish).
    """
    deployment = await run_in_threadpool(
        deployments.mark_redeploy,
        session=session,
        ctx=ctx,
        deployment_id=deployment_id,
        version_id=version_id,
    )
    pending = deployment.pending_model_version
    assert pending is not None
    target = target_for_version(pending, deployment)
    try:
        await inference_client.ensure_loaded(target.key, target.path, **target.load_options)
    except (inference_client.InferenceUnavailable, inference_client.InferenceError) as exc:
        await run_in_threadpool(
            deployments.clear_pending, session, deployment, f"redeploy failed: {exc}"
        )
        raise ServiceUnavailable(f"the new version could not be loaded: {exc}") from exc
    reconcile.watch_redeploy(deployment.id)
    return deployment


async def unload(deployment: Deployment) -> None:
    """Free a stopped deployment's versions (the live one and a pending one) in the server."""
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
