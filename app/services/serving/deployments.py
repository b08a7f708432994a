"""Deployments' records: create one, change its settings, mark a redeploy or a stop, and the
workspace's lists. Nothing here talks to the inference server (`control` does, after these).

A deployment has a serving name of its own that routes to its live version; a redeploy records
the new version as pending beside the live one, and the name switches over only once the new
one is ready (`reconcile`; docs/serving.md).

These functions commit, unlike most services (docs/architecture.md, "Transactions: who
commits"): what they record must be visible to the reconcile loop and the other web processes
before the inference server is asked to act on it, and a failure recorded just before the
caller's error is raised must survive that request's rollback.
"""

from __future__ import annotations

import dataclasses
from typing import TypedDict

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from app.core.errors import Conflict, InvalidTransition, ValidationFailed
from app.db.models import Deployment, DeploymentStatus
from app.domain import lifecycle
from app.services import artifacts
from app.services.registry import access as registry_access
from app.services.registry import versions as registry
from app.services.serving import access as deployment_access
from app.services.serving.targets import DeploymentSettings, default_max_new_tokens, settings_of
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext


class SettingsChanges(TypedDict, total=False):
    """A PATCH of a deployment's settings: only the fields it names (update_settings)."""

    replicas: int | None
    max_batch_size: int | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None


def list_for_workspace(*, session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    """The workspace's deployments, stopped ones included, newest first."""
    return list(
        session.scalars(
            select(Deployment)
            .options(joinedload(Deployment.model_version))  # every list shows its name
            .where(Deployment.workspace_id == ctx.workspace.id)
            .order_by(Deployment.id.desc())
        )
    )


def live_for_workspace(*, session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    """The workspace's deployments that are not stopped, newest first."""
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


def _check_name(session: Session, ctx: WorkspaceContext, name: str, own_id: int | None) -> None:
    for other in live_for_workspace(session=session, ctx=ctx):
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
    """Record a deployment of `version_id` as loading (a stopped or failed one of the same
    version comes back); committed, so the load asked for next has its row."""
    version = registry_access.get_version_for_editor(
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


def mark_failed(session: Session, deployment: Deployment, error: str) -> None:
    """The inference server refused or could not be reached: failed, with the reason (never
    left "loading"); committed, since the caller's error rolls its request back."""
    lifecycle.transition(deployment, DeploymentStatus.failed)
    deployment.error = error
    session.commit()


def _editable(session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    deployment = deployment_access.get_for_editor(
        session=session, ctx=ctx, deployment_id=deployment_id
    )
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
    """Record new settings (the fields given); committed before the server applies them."""
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


def mark_redeploy(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, version_id: int
) -> Deployment:
    """Record `version_id` as the deployment's pending version; committed, so the watcher and
    the reconcile loop (their own sessions) find it once the server has it ready."""
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


def clear_pending(session: Session, deployment: Deployment, error: str) -> None:
    """A redeploy's new version could not be loaded: the live one stays, with the reason;
    committed, since the caller's error rolls its request back."""
    deployment.pending_model_version_id = None
    deployment.error = error
    session.commit()


def mark_stopping(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    """Record the stop; committed before the unload, so the reconcile loop does not load the
    deployment again in between."""
    deployment = deployment_access.get_for_editor(
        session=session, ctx=ctx, deployment_id=deployment_id
    )
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
