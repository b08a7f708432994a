"""Dependency aliases shared by every router: the session, the caller and their workspace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.errors import Forbidden, NotAuthenticated
from app.db.models import Role, User
from app.db.session import REQUEST_SESSIONS, session_scope
from app.services.workspaces import access as workspace_access
from app.services.workspaces import sessions, tokens
from app.services.workspaces.access import WorkspaceContext

WORKSPACE_HEADER = "X-LLMIDE-Workspace"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed once when the route returns, rolled back when it
    raises (docs/architecture.md, "Transactions: who commits"). Services only flush."""
    with session_scope() as session:
        yield session


# scope="function": the commit runs once the route has returned and its answer is serialized,
# but before the answer is sent, so a client that has the answer finds the write in its next
# request, and a commit that fails is this request's error rather than a lost write after a
# 2xx. (With the default "request" scope the commit would run after the answer was sent.)
#
# A request holds its session (and, once it queries, a pooled connection) across several
# thread-pool hops: its dependencies and the endpoint. Unbounded, a burst deadlocked: every
# worker thread waited for a connection while the requests holding the connections waited for
# a thread, until the pool's 30 s timeout answered 500. So at most REQUEST_SESSIONS requests
# (fewer than the pool's connections) hold a session at once; the others wait in the event
# loop, without a thread. Every user of SessionDep shares this one limit.
SessionDep = Annotated[
    Session, Depends(get_session, scope="function", max_concurrency=REQUEST_SESSIONS)
]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _check_csrf(request: Request) -> None:
    """Cookie-authenticated writes must carry the session's CSRF token in a header.

    htmx sends it on every request (`hx-headers` on <body>); plain HTML forms are checked by
    the page routes against their hidden field.
    """
    if request.method in SAFE_METHODS:
        return
    sessions.check_csrf(request, request.headers.get(CSRF_HEADER))


def optional_user(request: Request, session: SessionDep) -> User | None:
    secret = _bearer(request)
    if secret is not None:
        user = tokens.user_for_secret(session=session, secret=secret)
        if user is None:
            raise NotAuthenticated("invalid or revoked API token")
        request.state.auth = "token"
        return user
    user = sessions.session_user(request, session)
    if user is not None:
        request.state.auth = "session"
    return user


def current_user(request: Request, user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise NotAuthenticated(
            "authentication required: sign in or send 'Authorization: Bearer <token>'"
        )
    if request.state.auth == "session":
        _check_csrf(request)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("this needs an administrator")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def workspace_context(request: Request, session: SessionDep, user: CurrentUser) -> WorkspaceContext:
    # OpenAI clients name a workspace as their "organization".
    ref = (
        request.headers.get(WORKSPACE_HEADER)
        or request.headers.get("openai-organization")
        or request.query_params.get("workspace")
    )
    if ref is None and request.state.auth == "session":
        ref = request.session.get("workspace_id")
    return workspace_access.context_for(session=session, user=user, workspace_ref=ref)


Workspace = Annotated[WorkspaceContext, Depends(workspace_context)]


def editor_context(ctx: Workspace) -> WorkspaceContext:
    ctx.require(Role.editor)
    return ctx


EditorWorkspace = Annotated[WorkspaceContext, Depends(editor_context)]
