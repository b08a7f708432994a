"""Finding a run for a caller: in the caller's workspace, and with the role the action needs.

Every action on one run starts here, so the role check lives next to the lookup instead of
being repeated by each route and service (`ctx.require(Role.editor)` then a get). The role is
checked first: a viewer is told it lacks the role whatever the id, and an id from another
workspace answers exactly like an unknown one (NotFound), so ids cannot be probed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Role, Run
from app.services.workspaces.access import WorkspaceContext, get_in_workspace


def get_for_member(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """The run, for anyone in its workspace (viewers included): reading it."""
    return get_in_workspace(session=session, ctx=ctx, model=Run, row_id=run_id, what="run")


def get_for_editor(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """The run, for an editor or owner of its workspace: changing it (cancel, stop, resume,
    reorder); a viewer gets Forbidden."""
    ctx.require(Role.editor)
    return get_for_member(session=session, ctx=ctx, run_id=run_id)
