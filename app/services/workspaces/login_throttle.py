"""Slows password guessing: a few failures per e-mail and client address, then a pause.

The failures are the audit log's `auth.login_failed` rows, so the count lives in the database
and holds across every web worker and restart (an in-process counter let N workers allow N
times the attempts). A successful sign-in (`auth.login`) from the same address starts the
count afresh.

An attempt is counted *before* its password is checked: `begin` takes a lock for this e-mail
and address, counts, and commits the attempt as a failure; a right password then turns that
row into the success. Counting after the check let a burst of simultaneous guesses all pass
the count while none had been recorded yet (24 concurrent guesses were all checked, and a right
password among them signed in). The lock is a transaction-scoped advisory lock on Postgres and
the database's write lock on SQLite (taken by a no-op UPDATE), so concurrent attempts in every
web process count one after the other. An attempt whose process dies mid-check stays a failure.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app.core.errors import TooManyRequests
from app.db.base import utcnow
from app.db.models import AuditEvent, User
from app.services.workspaces import audit

MAX_FAILURES = 5
WINDOW = timedelta(seconds=300)
FAILED = "auth.login_failed"
SUCCEEDED = "auth.login"


def _email_key(email: str) -> str:
    return email.strip().lower()[:320]


def _serialize(session: Session, key: str, client: str) -> None:
    """Hold, until this transaction ends, the lock every attempt for (key, client) takes."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"login\0{key}\0{client}".encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
    else:
        # SQLite has one writer at a time: a write that changes nothing still takes the lock
        # (waiting up to the busy timeout), and everything read after it is current.
        session.execute(update(AuditEvent).where(AuditEvent.id == -1).values(id=AuditEvent.id))


def _raise_if_over_limit(*, session: Session, key: str, client: str) -> None:
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


def begin(*, session: Session, email: str, client: str) -> int:
    """Count this attempt, committed as a failure before the password is checked.

    Raises TooManyRequests (recording nothing) once MAX_FAILURES attempts from `client` failed
    lately. Returns the attempt's audit row id for `record_success`. Commits the session: call
    it before the sign-in's own changes.
    """
    key = _email_key(email)
    session.commit()  # a fresh transaction, whose first statement takes the lock
    try:
        _serialize(session, key, client)
        _raise_if_over_limit(session=session, key=key, client=client)
        event = audit.record(
            session=session,
            actor=None,
            action=FAILED,
            target_type="email",
            target_id=key,
            ip=client,
        )
        session.flush()
        attempt = event.id
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return attempt


def record_success(*, session: Session, user: User, email: str, client: str, attempt: int) -> None:
    """The attempt was right: its failure row gives way to an `auth.login` row, in the
    sign-in's own transaction (committed with the new browser session)."""
    session.execute(delete(AuditEvent).where(AuditEvent.id == attempt))
    audit.record(
        session=session,
        actor=user,
        action=SUCCEEDED,
        target_type="email",
        target_id=_email_key(email),
        ip=client,
    )
