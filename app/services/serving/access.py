"""Finding a deployment for a caller: in the caller's workspace, and with the role the action
needs.

Every action on one deployment starts here, so the role check lives next to the lookup instead
of being repeated by each service, route and page (`ctx.require(Role.editor)` then a get). The
role is checked first: a viewer is told it lacks the role whatever the id, and an id from
another workspace answers exactly like an unknown one (NotFound), so ids cannot be probed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Deployment, Role
from app.services.workspaces.access import WorkspaceContext, get_in_workspace


def get_for_member(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    """The deployment, for anyone in its workspace (viewers included): reading it, or asking a
    deployed classifier for labels."""
    return get_in_workspace(
        session=session, ctx=ctx, model=Deployment, row_id=deployment_id, what="deployment"
    )


def get_for_editor(*, session: Session, ctx: WorkspaceContext, deployment_id: int) -> Deployment:
    """The deployment, for an editor or owner of its workspace: changing it (scale, redeploy,
    stop); a viewer gets Forbidden."""
    ctx.require(Role.editor)
    return get_for_member(session=session, ctx=ctx, deployment_id=deployment_id)
