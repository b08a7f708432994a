"""Browser sessions: what a signed-in cookie holds, set and cleared in one place.

The cookie is signed, not stored: a copy of it (a shared computer, a stolen backup) would stay
valid until it expires even after sign-out. So each sign-in also records a random session id,
hashed, in `browser_sessions`; sign-out deletes that row, and a cookie whose id is gone signs
nobody in.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection, Request

from app.core.errors import Forbidden
from app.core.security import constant_time_equals, hash_token, new_csrf_token
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import BrowserSession, User


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use (also for anonymous visitors' forms)."""
    token = request.session.get("csrf")
    if not token:
        token = new_csrf_token()
        request.session["csrf"] = token
    return str(token)


def check_csrf(request: Request, sent: str | None) -> None:
    """The one CSRF check, for the JSON API and the pages alike: `sent` (the header, or a plain
    form's hidden field) must equal the session's token."""
    expected = request.session.get("csrf")
    if not expected or not sent or not constant_time_equals(str(expected), str(sent)):
        raise Forbidden("missing or invalid CSRF token; reload the page and try again")


def sign_in(request: Request, user: User, *, session: Session) -> None:
    request.session.clear()  # a fresh session on login: no fixation
    sid = secrets.token_urlsafe(32)
    expired = utcnow() - timedelta(seconds=get_settings().session_max_age_s)
    session.execute(
        delete(BrowserSession).where(
            BrowserSession.user_id == user.id, BrowserSession.created_at < expired
        )
    )
    session.add(BrowserSession(user_id=user.id, sid_hash=hash_token(sid)))
    # Flushed only: the request's session commits before the answer that carries the cookie
    # is sent (app/api/deps.SessionDep), so the browser never holds a sid the database lacks.
    session.flush()
    request.session["user_id"] = user.id
    request.session["sid"] = sid
    request.session["csrf"] = new_csrf_token()


def sign_out(request: Request, *, session: Session) -> None:
    sid = request.session.get("sid")
    if isinstance(sid, str):
        session.execute(delete(BrowserSession).where(BrowserSession.sid_hash == hash_token(sid)))
    request.session.clear()


def switch_workspace(request: Request, workspace_id: int) -> None:
    request.session["workspace_id"] = workspace_id


def session_user(connection: HTTPConnection, session: Session) -> User | None:
    """The active user a signed session cookie belongs to, while its session is still recorded;
    a stale cookie is cleared."""
    if "session" not in connection.scope:
        return None
    user_id, sid = connection.session.get("user_id"), connection.session.get("sid")
    if user_id is None:
        return None
    record = None
    if isinstance(sid, str):
        record = session.scalar(
            select(BrowserSession).where(BrowserSession.sid_hash == hash_token(sid))
        )
    user = record.user if record is not None and record.user_id == int(user_id) else None
    if user is None or not user.is_active:
        connection.session.clear()
        return None
    return user


def credential_hash(connection: HTTPConnection) -> str | None:
    """The hash `browser_sessions` keeps for this connection's signed-in cookie, if any."""
    if "session" not in connection.scope:
        return None
    sid = connection.session.get("sid")
    return hash_token(sid) if isinstance(sid, str) else None


def live_hashes(*, session: Session, hashes: set[str]) -> set[str]:
    """Those of `hashes` whose browser session still signs someone in (not signed out, user
    active), as `session_user` decides: the open websockets of the others are closed."""
    if not hashes:
        return set()
    return set(
        session.scalars(
            select(BrowserSession.sid_hash)
            .join(User, User.id == BrowserSession.user_id)
            .where(
                BrowserSession.sid_hash.in_(hashes),
                User.is_active.is_(True),
            )
        )
    )
