"""Sign-in pages: first-admin setup, login, logout and the workspace switcher."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from app.core.errors import DomainError
from app.services.workspaces import access as workspace_access
from app.services.workspaces import login_throttle, sessions, users
from app.services.workspaces.sessions import session_user
from app.web.pages import CSRF, DbDep, PageDep, PageRoute, rollback, safe_next
from app.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/setup")
def setup_page(request: Request, session: DbDep) -> Response:
    if users.has_any_user(session=session):
        return _see_other("/login")
    return render(request, "setup.html", {"errors": {}, "email": "", "error": None})


@router.post("/setup", dependencies=[CSRF])
def create_first_admin(
    request: Request,
    session: DbDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    if users.has_any_user(session=session):
        return _see_other("/login")
    try:
        user = users.create_first_admin(session=session, email=email, password=password)
    except DomainError as exc:
        rollback(request)
        errors = {exc.param: exc.message} if exc.param else {}
        return render(
            request,
            "setup.html",
            {"errors": errors, "email": email, "error": None if exc.param else exc.message},
            status_code=exc.status_code,
        )
    sessions.sign_in(request, user, session=session)
    return _see_other("/")


@router.get("/login")
def login_page(request: Request, session: DbDep, next: str | None = None) -> Response:
    if not users.has_any_user(session=session):
        return _see_other("/setup")
    if session_user(request, session) is not None:
        return _see_other(safe_next(next))
    return render(
        request,
        "login.html",
        {"next": safe_next(next), "email": "", "error": None, "notice": None},
    )


@router.post("/login", dependencies=[CSRF])
def login(
    request: Request,
    session: DbDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    client = _client(request)
    try:
        # Counted as a failure before the password is checked (concurrent guesses included).
        attempt = login_throttle.begin(session=session, email=email, client=client)
        user = users.authenticate(session=session, email=email, password=password)
    except DomainError as exc:
        return render(
            request,
            "login.html",
            {"next": safe_next(next), "email": email, "error": exc.message, "notice": None},
            status_code=exc.status_code,
        )
    login_throttle.record_success(
        session=session, user=user, email=email, client=client, attempt=attempt
    )
    sessions.sign_in(request, user, session=session)
    return _see_other(safe_next(next))


@router.post("/logout", dependencies=[CSRF])
def logout(request: Request, session: DbDep) -> Response:
    sessions.sign_out(request, session=session)
    return _see_other("/login")


@router.post("/workspace", dependencies=[CSRF])
def switch_workspace(
    request: Request,
    session: DbDep,
    pc: PageDep,
    workspace_id: Annotated[int, Form()],
) -> Response:
    ctx = workspace_access.context_for(session=session, user=pc.user, workspace_ref=workspace_id)
    sessions.switch_workspace(request, ctx.workspace.id)
    return _see_other(_section_of(request.headers.get("referer", ""), request))


_SECTIONS = (
    "/datasets",
    "/runs",
    "/models",
    "/deployments",
    "/playground",
    "/settings/tokens",
    "/settings/members",
)


def _section_of(referer: str, request: Request) -> str:
    """Back to the list page the switcher was used on (its objects belong to the old workspace)."""
    parts = urlsplit(referer)
    if parts.netloc != request.headers.get("host"):
        return "/"
    return next((s for s in _SECTIONS if parts.path == s or parts.path.startswith(s + "/")), "/")
