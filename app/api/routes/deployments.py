"""Deployments: load a model version in the inference process, list, stop."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, Workspace
from app.api.schemas import DeploymentCreate, DeploymentRead
from app.db.models import Deployment
from app.services import deployments

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])


def to_read(deployment: Deployment) -> DeploymentRead:
    return DeploymentRead(
        id=deployment.id,
        model_version_id=deployment.model_version_id,
        serving_name=deployment.model_version.serving_name,
        status=deployment.status,
        error=deployment.error,
        created_at=deployment.created_at,
    )


@router.get("", response_model=list[DeploymentRead])
async def read_deployments(session: SessionDep, ctx: Workspace) -> list[DeploymentRead]:
    rows = await run_in_threadpool(deployments.list_for_workspace, session=session, ctx=ctx)
    await deployments.refresh_status(session=session, deployments=rows)
    return [to_read(d) for d in rows]


@router.post("", response_model=DeploymentRead, status_code=status.HTTP_202_ACCEPTED)
async def create_deployment(
    body: DeploymentCreate, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    """One click: record the deployment and start loading it; poll until `ready`."""
    deployment = await deployments.deploy(
        session=session, ctx=ctx, version_id=body.model_version_id
    )
    return to_read(deployment)


@router.get("/{deployment_id}", response_model=DeploymentRead)
async def read_deployment(
    deployment_id: int, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    deployment = await run_in_threadpool(
        deployments.get_for_member, session=session, ctx=ctx, deployment_id=deployment_id
    )
    await deployments.refresh_status(session=session, deployments=[deployment])
    return to_read(deployment)


@router.delete("/{deployment_id}", response_model=DeploymentRead)
async def stop_deployment(
    deployment_id: int, session: SessionDep, ctx: Workspace
) -> DeploymentRead:
    deployment = await run_in_threadpool(
        deployments.mark_stopping, session=session, ctx=ctx, deployment_id=deployment_id
    )
    await deployments.unload(deployment)
    return to_read(deployment)
