"""The audit log: one `record` call per state change, written in the change's own transaction.

Because the row is added to the caller's session (never committed here), a change that is
refused or rolled back leaves no audit row, and a change that is committed always has one.
Action names are `<resource>.<verb>` (docs/trust.md lists them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.core.middleware import client_ip
from app.db.models import AuditEvent, Role, User

if TYPE_CHECKING:  # workspaces records membership events, so it imports this module
    from app.services.workspaces.access import WorkspaceContext

# The actions recorded today (the audit page offers them as filters); new ones follow the same
# `<resource>.<verb>` shape and are listed in docs/trust.md.
KNOWN_ACTIONS = (
    "run.launch",
    "run.cancel",
    "run.resume",
    "run.reorder",
    "sweep.create",
    "sweep.cancel",
    "cross_validation.create",
    "cross_validation.register",
    "arena.vote",
    "dataset.upload",
    "dataset.delete",
    "model.register",
    "model.import",
    "model.stage",
    "model.promote",
    "model.export",
    "model.evaluate",
    "deployment.create",
    "deployment.scale",
    "deployment.redeploy",
    "deployment.delete",
    "member.invite",
    "member.role_change",
    "member.remove",
    "workspace.create",
    "workspace.quota",
)

# A detail is a short summary (names, statuses, sizes), never a payload: it is capped so a
# caller cannot grow the log without bound through a long name.
MAX_DETAIL_CHARS = 2_000


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 300:
        return value[:300] + "…"
    return value


def record(
    *,
    session: Session,
    actor: WorkspaceContext | User | None,
    action: str,
    target_type: str,
    target_id: int | str,
    detail: dict[str, Any] | None = None,
    workspace_id: int | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Add an audit row to `session`'s transaction; the caller's commit writes it.

    `actor`: a WorkspaceContext (the event belongs to its workspace), a User (a server-level
    event: tokens, accounts) or None (nobody signed in, e.g. a failed sign-in).
    `workspace_id` overrides the workspace (an administrator acting on another one); `ip`
    the client address (by default the current request's).
    """
    if actor is None or isinstance(actor, User):
        actor_id = actor.id if actor is not None else None
    else:
        actor_id = actor.user.id
        workspace_id = workspace_id if workspace_id is not None else actor.workspace.id
    detail = {k: _short(v) for k, v in (detail or {}).items()}
    if len(repr(detail)) > MAX_DETAIL_CHARS:
        detail = {"truncated": True}
    event = AuditEvent(
        workspace_id=workspace_id,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:320],
        detail=detail,
        ip=ip if ip is not None else client_ip.get(),
    )
    session.add(event)
    return event


def page_for_workspace(
    *,
    session: Session,
    ctx: WorkspaceContext,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """Newest first; `action` filters exactly (`run.launch`) or by prefix (`run.`). Owners only:
    the log names every member's actions and addresses."""
    ctx.require(Role.owner)
    query = (
        select(AuditEvent)
        .options(joinedload(AuditEvent.actor))
        .where(AuditEvent.workspace_id == ctx.workspace.id)
    )
    if action:
        if action.endswith("."):
            query = query.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            query = query.where(AuditEvent.action == action)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)))


def count_for_workspace(*, session: Session, ctx: WorkspaceContext) -> int:
    ctx.require(Role.owner)
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.workspace_id == ctx.workspace.id)
        )
        or 0
    )
