"""Administration pages: user accounts (create, disable, enable, reset a password) and
workspaces (list, create for an owner). Server administrators only; anyone else gets the
403 page. The same services back the JSON API (app/api/routes/admin.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden, NotFound
from app.services.workspaces import service as workspaces
from app.services.workspaces import users
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, rollback
from app.web.rendering import render

router = APIRouter(prefix="/admin", route_class=PageRoute, include_in_schema=False)


# --- users --------------------------------------------------------------------------------
def _users_page(
    request: Request, session: Session, pc: PageContext, status_code: int = 200, **extra: Any
) -> Response:
    return render(
        request,
        "admin_users.html",
        {"users": users.list_users(session=session, admin=pc.user), **extra},
        status_code=status_code,
    )


@router.get("/users")
def user_list(
    request: Request,
    session: DbDep,
    pc: PageDep,
    email: Annotated[str, Query(max_length=320)] = "",
) -> Response:
    """`?email=` fills the form in (the members page links here for someone without an account)."""
    return _users_page(request, session, pc, email=email)


@router.post("/users", dependencies=[CSRF])
def create_user(
    request: Request,
    session: DbDep,
    pc: PageDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    is_admin: Annotated[bool, Form()] = False,
) -> Response:
    users.require_admin(pc.user)
    try:
        user = users.create_user(
            session=session, email=email, password=password, is_admin=is_admin, created_by=pc.user
        )
    except DomainError as exc:
        rollback(request)
        return _users_page(
            request, session, pc, exc.status_code, error=exc.message, email=email, admin=is_admin
        )
    return _users_page(
        request,
        session,
        pc,
        message=f"{user.email} can now sign in; add them to a workspace from its Members page.",
    )


@router.post("/users/{user_id}/active", dependencies=[CSRF])
def set_active(
    user_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    active: Annotated[bool, Form()],
) -> Response:
    try:
        user = users.set_active(session=session, admin=pc.user, user_id=user_id, active=active)
    except (Forbidden, NotFound):
        raise
    except DomainError as exc:
        rollback(request)
        return _users_page(request, session, pc, exc.status_code, row_error=exc.message)
    said = "enabled again" if active else "disabled: they cannot sign in and their tokens stop"
    return _users_page(request, session, pc, message=f"{user.email} is {said}.")


@router.post("/users/{user_id}/password", dependencies=[CSRF])
def reset_password(
    user_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    try:
        user = users.reset_password(
            session=session, admin=pc.user, user_id=user_id, password=password
        )
    except (Forbidden, NotFound):
        raise
    except DomainError as exc:
        rollback(request)
        return _users_page(request, session, pc, exc.status_code, row_error=exc.message)
    return _users_page(
        request, session, pc, message=f"{user.email}'s password is changed; tell them the new one."
    )


# --- workspaces ---------------------------------------------------------------------------
def _workspaces_page(
    request: Request, session: Session, pc: PageContext, status_code: int = 200, **extra: Any
) -> Response:
    return render(
        request,
        "admin_workspaces.html",
        {"workspaces": workspaces.list_all(session=session, admin=pc.user), **extra},
        status_code=status_code,
    )


@router.get("/workspaces")
def workspace_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    return _workspaces_page(request, session, pc)


@router.post("/workspaces", dependencies=[CSRF])
def create_workspace(
    request: Request,
    session: DbDep,
    pc: PageDep,
    name: Annotated[str, Form(max_length=100)] = "",
    owner_email: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    users.require_admin(pc.user)
    try:
        workspace = workspaces.create_for_owner(
            session=session, admin=pc.user, name=name, owner_email=owner_email or pc.user.email
        )
    except DomainError as exc:
        rollback(request)
        return _workspaces_page(
            request, session, pc, exc.status_code, error=exc.message, name=name,
            owner_email=owner_email,
        )  # fmt: skip
    return _workspaces_page(
        request,
        session,
        pc,
        message=f"Workspace {workspace.name} is created; its owner adds members to it.",
    )
