"""The workspace's audit log, for its owners: newest first, paged, filtered by action."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, Workspace
from app.api.schemas.audit import AuditEventRead, AuditPage
from app.db.base import MAX_ID
from app.services.workspaces import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def read_audit_events(
    session: SessionDep,
    ctx: Workspace,
    action: Annotated[
        str | None,
        Query(max_length=64, description="`run.launch` (exact) or `run.` (every run action)"),
    ] = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditPage:
    events = audit.page_for_workspace(
        session=session, ctx=ctx, action=action, before_id=before_id, limit=limit
    )
    items = [
        AuditEventRead.model_validate(e).model_copy(
            update={"actor_email": e.actor.email if e.actor is not None else None}
        )
        for e in events
    ]
    return AuditPage(items=items, next_before_id=events[-1].id if len(events) == limit else None)
