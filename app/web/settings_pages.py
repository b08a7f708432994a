"""Settings pages: the caller's API tokens, the workspace's members and its audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden, NotFound, ValidationFailed
from app.db.base import MAX_ID
from app.db.models import Role
from app.services.workspaces import access as workspace_access
from app.services.workspaces import audit, tokens
from app.services.workspaces import members as workspace_members
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect, rollback
from app.web.rendering import is_htmx, render

router = APIRouter(prefix="/settings", route_class=PageRoute, include_in_schema=False)


# --- API tokens ---------------------------------------------------------------------------
def _tokens_page(
    request: Request, session: Session, pc: PageContext, status_code: int = 200, **extra: Any
) -> Response:
    return render(
        request,
        "settings_tokens.html",
        {"tokens": tokens.list_tokens(session=session, user=pc.user), **extra},
        block="token_panel",
        status_code=200 if is_htmx(request) else status_code,
    )


@router.get("/tokens")
def token_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    return _tokens_page(request, session, pc)


@router.post("/tokens", dependencies=[CSRF])
def create_token(
    request: Request,
    session: DbDep,
    pc: PageDep,
    name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """The secret is in this one answer only: it is never stored, so never shown again."""
    try:
        token, secret = tokens.create_token(session=session, user=pc.user, name=name)
    except Forbidden:
        raise  # not a form mistake: the error page says what role is needed
    except DomainError as exc:
        rollback(request)
        return _tokens_page(request, session, pc, exc.status_code, error=exc.message)
    response = _tokens_page(request, session, pc, created_secret=secret, created_name=token.name)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/tokens/{token_id}/revoke", dependencies=[CSRF])
def revoke_token(token_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    tokens.revoke_token(session=session, user=pc.user, token_id=token_id)
    if not is_htmx(request):
        return redirect(request, "/settings/tokens")
    return _tokens_page(request, session, pc)


# --- members ------------------------------------------------------------------------------
def _members_page(
    request: Request, session: Session, pc: PageContext, status_code: int = 200, **extra: Any
) -> Response:
    return render(
        request,
        "settings_members.html",
        {
            "members": workspace_members.list_members(session=session, ctx=pc.ctx),
            "roles": [r.value for r in Role],
            **extra,
        },
        block="members_panel",
        status_code=200 if is_htmx(request) else status_code,
    )


def _role_from_form(role: str) -> Role:
    if role not in Role.__members__:
        raise ValidationFailed(
            f"unknown role {role!r}; choose viewer, editor or owner", param="role"
        )
    return Role(role)


@router.get("/members")
def member_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    return _members_page(request, session, pc)


@router.post("/members", dependencies=[CSRF])
def add_member(
    request: Request,
    session: DbDep,
    pc: PageDep,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form(max_length=20)] = Role.viewer.value,
) -> Response:
    try:
        membership = workspace_members.add_member(
            session=session, ctx=pc.ctx, email=email, role=_role_from_form(role)
        )
    except Forbidden:
        raise  # not a form mistake: the error page says what role is needed
    except DomainError as exc:
        rollback(request)
        # No such account: an administrator can make it right away (the form comes filled in).
        missing = isinstance(exc, NotFound) and pc.user.is_admin
        return _members_page(
            request,
            session,
            pc,
            exc.status_code,
            error=exc.message,
            email=email,
            role=role,
            create_account=email.strip().lower() if missing else None,
        )
    return _members_page(request, session, pc, added=membership.user.email)


def _after_member_change(
    request: Request, session: Session, pc: PageContext, user_id: int, **extra: Any
) -> Response:
    """The panel again; after a change to one's own membership the whole page is stale (the
    menu and the controls follow the role), so it is loaded afresh."""
    if user_id == pc.user.id:
        gone = (
            workspace_access.role_in(session=session, user_id=user_id, workspace_id=pc.workspace.id)
            is None
        )
        return redirect(request, "/" if gone else "/settings/members")
    if not is_htmx(request):
        return redirect(request, "/settings/members")
    return _members_page(request, session, pc, **extra)


@router.post("/members/{user_id}/role", dependencies=[CSRF])
def change_member_role(
    user_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    role: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    try:
        membership = workspace_members.change_member_role(
            session=session, ctx=pc.ctx, user_id=user_id, role=_role_from_form(role)
        )
    except (Forbidden, NotFound):
        raise  # not a form mistake: the error page says what is wrong
    except DomainError as exc:
        rollback(request)
        return _members_page(request, session, pc, exc.status_code, member_error=exc.message)
    email = membership.user.email
    return _after_member_change(request, session, pc, user_id, changed=f"{email} is now {role}.")


@router.post("/members/{user_id}/remove", dependencies=[CSRF])
def remove_member(user_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    try:
        removed = workspace_members.remove_member(session=session, ctx=pc.ctx, user_id=user_id)
    except (Forbidden, NotFound):
        raise
    except DomainError as exc:
        rollback(request)
        return _members_page(request, session, pc, exc.status_code, member_error=exc.message)
    email = removed.user.email
    return _after_member_change(request, session, pc, user_id, changed=f"{email} was removed.")


# --- audit log ----------------------------------------------------------------------------
AUDIT_PAGE_SIZE = 50


@router.get("/audit")
def audit_log(
    request: Request,
    session: DbDep,
    pc: PageDep,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """Owners only (the service refuses others with a 403 page naming the role needed)."""
    events = audit.page_for_workspace(
        session=session, ctx=pc.ctx, action=action, before_id=before_id, limit=AUDIT_PAGE_SIZE
    )
    return render(
        request,
        "settings_audit.html",
        {
            "events": events,
            "action": action or "",
            "before_id": before_id,
            "next_before_id": events[-1].id if len(events) == AUDIT_PAGE_SIZE else None,
            "actions": audit.KNOWN_ACTIONS,
        },
        block="audit_panel",
    )
