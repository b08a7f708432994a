"""Builds the messages a run's live view needs from the database (the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from app.core.errors import NotAuthenticated
from app.core.security import hash_token
from app.db.models import Run, RunStatus, User
from app.realtime.credentials import Credential
from app.services import chart_history
from app.services.runs import service as runs
from app.services.workspaces import access as workspace_access
from app.services.workspaces import sessions, tokens
from app.services.workspaces.access import WorkspaceContext


@dataclass
class Cursor:
    """What one connection has already been sent."""

    after_step: int
    metric_id: int = 0
    event_id: int = 0
    last_progress: dict[str, Any] = field(default_factory=dict)


def authenticate(
    *,
    session: Session,
    connection: HTTPConnection,
    bearer: str | None,
    workspace_ref: str | None,
) -> tuple[WorkspaceContext, Credential]:
    """A bearer token, else the session cookie (only while its session is recorded); with the
    credential it signed in with, which the socket then watches (app/realtime/credentials.py)."""
    user: User | None = None
    credential: Credential | None = None
    if bearer:
        user = tokens.user_for_secret(session=session, secret=bearer)
        credential = Credential("token", hash_token(bearer))
    else:
        sid_hash = sessions.credential_hash(connection)
        user = sessions.session_user(connection, session)
        credential = Credential("session", sid_hash) if sid_hash else None
    if user is None or not user.is_active or credential is None:
        raise NotAuthenticated("authentication required")
    ctx = workspace_access.context_for(session=session, user=user, workspace_ref=workspace_ref)
    return ctx, credential


def next_messages(*, session: Session, run: Run, cursor: Cursor) -> tuple[list[dict], bool]:
    """Messages with everything new since `cursor` (advanced in place); True once the run ended.

    A slow client simply gets one larger message next time: updates merge, nothing is dropped.
    """
    messages: list[dict[str, Any]] = []
    if cursor.after_step < 0 and cursor.metric_id == 0:
        # A new chart: the run's history, thinned if the run is long.
        rows, cursor.metric_id = chart_history.history_rows(session=session, run=run)
    else:
        rows = runs.metric_rows(
            session=session, run_id=run.id, after_step=cursor.after_step, after_id=cursor.metric_id
        )
        if rows:
            cursor.metric_id = rows[-1].id
    if rows:
        messages.append({"type": "metrics", "points": runs.group_by_step(rows)})
    new_events = runs.events(session=session, run_id=run.id, after_id=cursor.event_id)
    if new_events:
        cursor.event_id = new_events[-1].id
        messages.append(
            {
                "type": "log",
                "lines": [
                    {
                        "id": e.id,
                        "level": e.level,
                        "message": e.message,
                        "at": e.created_at.isoformat(),
                    }
                    for e in new_events
                ],
            }
        )
    session.refresh(run)
    progress = runs.progress(run)
    if progress != cursor.last_progress:
        cursor.last_progress = progress
        messages.append({"type": "status", **progress})
    return messages, RunStatus(run.status).is_terminal
