"""What every page route shares: the signed-in context, CSRF checks for forms, HTML errors."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from app.api.deps import CSRF_HEADER, SessionDep
from app.core.errors import DomainError, NotAuthenticated, NotFound
from app.db.models import Role, User, Workspace
from app.services.workspaces import access as workspace_access
from app.services.workspaces.access import WorkspaceContext
from app.services.workspaces.sessions import check_csrf, session_user
from app.web.rendering import is_htmx, render, render_error_page

CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class NavInfo:
    """Plain facts the layout shows: no ORM objects, so an error page renders after a rollback."""

    email: str
    is_admin: bool
    workspace_id: int
    workspace_name: str
    role: str
    can_edit: bool
    is_owner: bool
    workspaces: list[tuple[int, str, str]]


@dataclass(frozen=True)
class PageContext:
    """The signed-in person, the workspace they act in and the others they can switch to."""

    user: User
    ctx: WorkspaceContext
    memberships: list[tuple[Workspace, Role]]

    @property
    def workspace(self) -> Workspace:
        return self.ctx.workspace

    @property
    def role(self) -> Role:
        return self.ctx.role

    @property
    def can_edit(self) -> bool:
        return self.ctx.can_edit

    @property
    def is_owner(self) -> bool:
        return self.ctx.role == Role.owner


def page_db(request: Request, session: SessionDep) -> Session:
    """The request's database session, remembered so a failed page can roll it back."""
    request.state.db = session
    return session


DbDep = Annotated[Session, Depends(page_db)]


def rollback(request: Request) -> None:
    """Undo whatever a failed operation flushed before the page answers with its error."""
    session = getattr(request.state, "db", None)
    if session is not None:
        session.rollback()


def page_context(request: Request, session: DbDep) -> PageContext:
    user = session_user(request, session)
    if user is None:
        raise NotAuthenticated("sign in to continue")
    ref = request.session.get("workspace_id")
    # Loaded once: the context and the workspace switcher both need them.
    memberships = workspace_access.list_for_user(session=session, user=user)
    try:
        ctx = workspace_access.context_for(
            session=session, user=user, workspace_ref=ref, memberships=memberships
        )
    except NotFound:
        # The remembered workspace is gone (or the membership was removed): fall back.
        request.session.pop("workspace_id", None)
        ctx = workspace_access.context_for(
            session=session, user=user, workspace_ref=None, memberships=memberships
        )
    request.state.nav = NavInfo(
        email=user.email,
        is_admin=user.is_admin,
        workspace_id=ctx.workspace.id,
        workspace_name=ctx.workspace.name,
        role=str(ctx.role),
        can_edit=ctx.can_edit,
        is_owner=ctx.role == Role.owner,
        workspaces=[(ws.id, ws.name, str(role)) for ws, role in memberships],
    )
    return PageContext(user=user, ctx=ctx, memberships=memberships)


PageDep = Annotated[PageContext, Depends(page_context)]


async def require_csrf(request: Request) -> None:
    """Writes need the session's CSRF token: htmx sends the header, plain forms a hidden field."""
    sent = request.headers.get(CSRF_HEADER)
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # cached: FastAPI has already parsed it for Form params
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    check_csrf(request, sent)


CSRF = Depends(require_csrf)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site relative paths ("/runs/3"), never "//evil.example" or "https://...""."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch in target for ch in "\\\r\n\t") or any(ord(ch) < 32 for ch in target):
        return default
    return target


def redirect(request: Request, url: str) -> Response:
    """Go to `url`: a 303 for a plain form, an HX-Redirect for an htmx request."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def login_redirect(request: Request) -> Response:
    url = "/login"
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if here != "/":
            url += "?next=" + quote(here, safe="/")
    return redirect(request, url)


def form_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic errors as {field: message}, for showing next to each form field."""
    errors: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else "form"
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.setdefault(field, message)
    return errors


def error_fragment(request: Request, status_code: int, message: str) -> Response:
    """An htmx request's error: an alert swapped into the page's flash area, not a whole page."""
    return render(
        request,
        "_alert.html",
        {"message": message, "status_code": status_code},
        status_code=status_code,
        headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
    )


class PageRoute(APIRoute):
    """Routes whose domain errors become pages (or alerts for htmx), never JSON or a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except NotAuthenticated:
                rollback(request)
                return login_redirect(request)
            except DomainError as exc:
                rollback(request)
                if is_htmx(request):
                    return error_fragment(request, exc.status_code, exc.message)
                return render_error_page(request, exc.status_code, exc.message)

        return page_handler
