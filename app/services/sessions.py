"""Browser sessions: what a signed-in cookie holds, set and cleared in one place."""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection, Request

from app.core.security import new_csrf_token
from app.db.models import User


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use (also for anonymous visitors' forms)."""
    token = request.session.get("csrf")
    if not token:
        token = new_csrf_token()
        request.session["csrf"] = token
    return str(token)


def sign_in(request: Request, user: User) -> None:
    request.session.clear()  # a fresh session on login: no fixation
    request.session["user_id"] = user.id
    request.session["csrf"] = new_csrf_token()


def sign_out(request: Request) -> None:
    request.session.clear()


def switch_workspace(request: Request, workspace_id: int) -> None:
    request.session["workspace_id"] = workspace_id


def session_user(connection: HTTPConnection, session: Session) -> User | None:
    """The active user a signed session cookie belongs to; a stale cookie is cleared."""
    if "session" not in connection.scope:
        return None
    user_id = connection.session.get("user_id")
    if user_id is None:
        return None
    user = session.get(User, int(user_id))
    if user is None or not user.is_active:
        connection.session.clear()
        return None
    return user
