"""Finding a registry object for a caller: in the caller's workspace, and with the role the
action needs.

Every action on a version, a registered model, an export or an evaluation starts here, so the
role check lives next to the lookup instead of being repeated by each route and service
(`ctx.require(Role.editor)` then a get). The role is checked first: a viewer is told it lacks
the role whatever the id, and an id from another workspace answers exactly like an unknown one
(NotFound), so ids cannot be probed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Evaluation, ModelExport, ModelVersion, RegisteredModel, Role
from app.services.workspaces.access import WorkspaceContext, get_in_workspace


def get_version_for_member(
    *, session: Session, ctx: WorkspaceContext, version_id: int
) -> ModelVersion:
    """The version, for anyone in its workspace (viewers included): reading it."""
    return get_in_workspace(
        session=session, ctx=ctx, model=ModelVersion, row_id=version_id, what="model version"
    )


def get_version_for_editor(
    *, session: Session, ctx: WorkspaceContext, version_id: int
) -> ModelVersion:
    """The version, for an editor or owner of its workspace: changing it or starting work on it
    (stage, tags, an export, an evaluation); a viewer gets Forbidden."""
    ctx.require(Role.editor)
    return get_version_for_member(session=session, ctx=ctx, version_id=version_id)


def get_model_for_member(
    *, session: Session, ctx: WorkspaceContext, model_id: int
) -> RegisteredModel:
    """The registered model, for anyone in its workspace."""
    return get_in_workspace(
        session=session, ctx=ctx, model=RegisteredModel, row_id=model_id, what="registered model"
    )


def get_export_for_member(
    *, session: Session, ctx: WorkspaceContext, export_id: int
) -> ModelExport:
    """An export of one of the workspace's versions, for anyone in the workspace."""
    return get_in_workspace(
        session=session, ctx=ctx, model=ModelExport, row_id=export_id, what="export"
    )


def get_evaluation_for_member(
    *, session: Session, ctx: WorkspaceContext, evaluation_id: int
) -> Evaluation:
    """An evaluation of one of the workspace's versions, for anyone in the workspace."""
    return get_in_workspace(
        session=session, ctx=ctx, model=Evaluation, row_id=evaluation_id, what="evaluation"
    )
