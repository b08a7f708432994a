"""Slows password guessing: a few failures per e-mail and client address, then a pause.

The failures are the audit log's `auth.login_failed` rows, so the count lives in the database
and holds across every web worker and restart (an in-process counter let N workers allow N
times the attempts). A successful sign-in (`auth.login`) from the same address starts the
count afresh.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import TooManyRequests
from app.db.base import utcnow
from app.db.models import AuditEvent, User
from app.services import audit

MAX_FAILURES = 5
WINDOW = timedelta(seconds=300)
FAILED = "auth.login_failed"
SUCCEEDED = "auth.login"


def _email_key(email: str) -> str:
    return email.strip().lower()[:320]


def check(*, session: Session, email: str, client: str) -> None:
    """Raise TooManyRequests if this e-mail failed MAX_FAILURES times from `client` lately."""
    key = _email_key(email)
    now = utcnow()
    since = now - WINDOW
    last_success = session.scalar(
        select(func.max(AuditEvent.created_at)).where(
            AuditEvent.action == SUCCEEDED,
            AuditEvent.target_id == key,
            AuditEvent.ip == client,
            AuditEvent.created_at > since,
        )
    )
    if last_success is not None:
        since = max(since, last_success)
    recent = list(
        session.scalars(
            select(AuditEvent.created_at)
            .where(
                AuditEvent.action == FAILED,
                AuditEvent.target_id == key,
                AuditEvent.ip == client,
                AuditEvent.created_at > since,
            )
            .order_by(AuditEvent.created_at.desc())
            .limit(MAX_FAILURES)
        )
    )
    if len(recent) >= MAX_FAILURES:
        oldest = recent[-1]
        wait = int((WINDOW - (now - oldest)).total_seconds()) + 1
        raise TooManyRequests(f"too many failed sign-in attempts; try again in {wait} s")


def record_failure(*, session: Session, email: str, client: str) -> None:
    """Record and commit a failure now: the request itself is about to fail (and roll back)."""
    audit.record(
        session=session,
        actor=None,
        action=FAILED,
        target_type="email",
        target_id=_email_key(email),
        ip=client,
    )
    session.commit()


def record_success(*, session: Session, user: User, email: str, client: str) -> None:
    """Added to the sign-in's own transaction (committed with the new browser session)."""
    audit.record(
        session=session,
        actor=user,
        action=SUCCEEDED,
        target_type="email",
        target_id=_email_key(email),
        ip=client,
    )
