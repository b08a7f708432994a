"""Browser sessions: what a signed-in cookie holds, set and cleared in one place."""

from __future__ import annotations

from starlette.requests import Request

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
