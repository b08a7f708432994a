"""Deployments: load a model version in the inference process, list, scale, redeploy, stop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, Workspace
from app.api.schemas.deployments import (
    DeploymentCreate,
    DeploymentPredict,
    DeploymentRead,
    DeploymentRedeploy,
    DeploymentSettingsIn,
    DeploymentStats,
)
from app.db.models import Deployment
from app.services.serving import access as deployment_access
from app.services.serving import classifiers, deployments, reconcile, targets
from app.services.serving import control as deployment_control

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])


def base_url(request: Request) -> str:
    """Where OpenAI clients point: this server's /v1."""
    return str(request.base_url).rstrip("/") + "/v1"


def to_read(
    deployment: Deployment, request: Request, stats: dict[str, Any] | None = None
) -> DeploymentRead:
    figures = dict(stats or {})
    backend = figures.pop("backend", None)
    backend_reason = figures.pop("backend_reason", None)
    return DeploymentRead(
        id=deployment.id,
        name=deployment.name or deployment.model_version.serving_name,
        model_version_id=deployment.model_version_id,
        serving_name=deployment.model_version.serving_name,
        status=deployment.status,
        error=deployment.error,
        created_at=deployment.created_at,
        replicas=deployment.replicas,
        max_batch_size=deployment.max_batch_size,
        max_new_tokens=deployment.max_new_tokens,
        temperature=deployment.temperature,
        top_p=deployment.top_p,
        pending_model_version_id=deployment.pending_model_version_id,
        url=base_url(request),
        backend=backend,
        backend_reason=backend_reason,
        stats=DeploymentStats(**figures) if figures else None,
    )


@router.get("", response_model=list[DeploymentRead])
async def read_deployments(
    request: Request, session: SessionDep, ctx: Workspace
) -> list[DeploymentRead]:
    rows = await run_in_threadpool(deployments.list_for_workspace, session=session, ctx=ctx)
    stats = await reconcile.refresh_status(session=session, deployments=rows) or {}
    return [to_read(d, request, stats.get(d.id)) for d in rows]


@router.post("", response_model=DeploymentRead, status_code=status.HTTP_202_ACCEPTED)
async def create_deployment(
    body: DeploymentCreate, request: Request, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    """One click: record the deployment and start loading it; poll until `ready`."""
    chosen = body.model_dump(exclude_none=True, exclude={"model_version_id", "name"})
    deployment = await deployment_control.deploy(
        session=session,
        ctx=ctx,
        version_id=body.model_version_id,
        name=body.name,
        settings=targets.DeploymentSettings(**chosen),
    )
    return to_read(deployment, request)


@router.get("/{deployment_id}", response_model=DeploymentRead)
async def read_deployment(
    deployment_id: int, request: Request, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    deployment = await run_in_threadpool(
        deployment_access.get_for_member, session=session, ctx=ctx, deployment_id=deployment_id
    )
    stats = await reconcile.refresh_status(session=session, deployments=[deployment]) or {}
    return to_read(deployment, request, stats.get(deployment.id))


@router.patch("/{deployment_id}", response_model=DeploymentRead)
async def update_deployment(
    deployment_id: int,
    body: DeploymentSettingsIn,
    request: Request,
    session: SessionDep,
    ctx: Workspace,
) -> DeploymentRead:
    """Scale (replicas, max batch size) or change default sampling; applied without a reload."""
    deployment = await deployment_control.scale(
        session=session, ctx=ctx, deployment_id=deployment_id, **body.model_dump(exclude_none=True)
    )
    return to_read(deployment, request)


@router.post("/{deployment_id}/redeploy", response_model=DeploymentRead, status_code=202)
async def redeploy_deployment(
    deployment_id: int,
    body: DeploymentRedeploy,
    request: Request,
    session: SessionDep,
    ctx: Workspace,
) -> DeploymentRead:
    """Serve another version under the same name with zero downtime (switches when ready)."""
    deployment = await deployment_control.redeploy(
        session=session, ctx=ctx, deployment_id=deployment_id, version_id=body.model_version_id
    )
    return to_read(deployment, request)


@router.post("/{deployment_id}/predict")
async def predict(
    deployment_id: int, body: DeploymentPredict, session: SessionDep, ctx: Workspace
) -> dict[str, Any]:
    """Labels and scores from a deployed sequence-classification model."""
    return await classifiers.predict(
        session=session, ctx=ctx, deployment_id=deployment_id, inputs=body.inputs
    )


@router.delete("/{deployment_id}", response_model=DeploymentRead)
async def stop_deployment(
    deployment_id: int, request: Request, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    deployment = await run_in_threadpool(
        deployments.mark_stopping, session=session, ctx=ctx, deployment_id=deployment_id
    )
    await deployment_control.unload(deployment)
    return to_read(deployment, request)
