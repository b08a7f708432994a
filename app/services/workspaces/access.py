"""Who is acting, in which workspace, with which role: the check every scoped query relies on.

A request resolves its `WorkspaceContext` here (`context_for`, from the memberships table on
every request), and each domain finds its rows through `get_in_workspace`, so an id from
another workspace answers exactly like an unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.errors import Forbidden, NotFound
from app.db.base import Base, get_by_id
from app.db.models import Membership, Role, User, Workspace

ScopedT = TypeVar("ScopedT", bound=Base)

_ROLE_RANK = {Role.viewer: 0, Role.editor: 1, Role.owner: 2}


@dataclass(frozen=True)
class WorkspaceContext:
    """Who is acting, in which workspace, with which role: passed to every scoped service."""

    user: User
    workspace: Workspace
    role: Role

    def require(self, minimum: Role) -> None:
        if _ROLE_RANK[self.role] < _ROLE_RANK[minimum]:
            raise Forbidden(
                f"your role in workspace '{self.workspace.name}' is {self.role}; "
                f"this needs {minimum} or higher"
            )

    @property
    def can_edit(self) -> bool:
        return _ROLE_RANK[self.role] >= _ROLE_RANK[Role.editor]


def list_for_user(*, session: Session, user: User) -> list[tuple[Workspace, Role]]:
    rows = session.execute(
        select(Workspace, Membership.role)
        .join(Membership, Membership.workspace_id == Workspace.id)
        .where(Membership.user_id == user.id)
        .order_by(Workspace.id)
    ).all()
    return [(ws, Role(role)) for ws, role in rows]


def context_for(
    *,
    session: Session,
    user: User,
    workspace_ref: str | int | None,
    memberships: list[tuple[Workspace, Role]] | None = None,
) -> WorkspaceContext:
    """Resolve the workspace a request acts in: the one named (id or slug), else the user's first.

    An unknown workspace and one the user is not a member of look the same (404), so ids of
    other teams' workspaces cannot be probed. `memberships`: the user's, if already loaded.
    """
    if memberships is None:
        memberships = list_for_user(session=session, user=user)
    if not memberships:
        raise Forbidden("you are not a member of any workspace; ask an owner to invite you")
    if workspace_ref in (None, ""):
        workspace, role = memberships[0]
        return WorkspaceContext(user=user, workspace=workspace, role=role)
    for workspace, role in memberships:
        if str(workspace.id) == str(workspace_ref) or workspace.slug == workspace_ref:
            return WorkspaceContext(user=user, workspace=workspace, role=role)
    raise NotFound(f"workspace {workspace_ref!r} not found")


def role_in(*, session: Session, user_id: int, workspace_id: int) -> Role | None:
    """The user's role in the workspace, None when they are not (or no longer) a member."""
    role = session.scalar(
        select(Membership.role).where(
            Membership.workspace_id == workspace_id, Membership.user_id == user_id
        )
    )
    return Role(role) if role is not None else None


def lock(*, session: Session, ctx: WorkspaceContext) -> None:
    """Serialize a check-then-write on one workspace until the caller's commit.

    A no-op UPDATE of the workspace row rather than SELECT ... FOR UPDATE: Postgres takes the
    row lock either way, and SQLite (which ignores FOR UPDATE) takes its write lock here,
    before the check reads, so the second writer waits (busy timeout) and then sees what the
    first one committed. Hold it briefly: take it after slow work, just before the check.
    """
    session.execute(
        update(Workspace)
        .where(Workspace.id == ctx.workspace.id)
        .values(name=Workspace.name)
        .execution_options(synchronize_session=False)
    )


def get_in_workspace(
    *, session: Session, ctx: WorkspaceContext, model: type[ScopedT], row_id: int, what: str
) -> ScopedT:
    """The row with this id in the caller's workspace, or NotFound.

    Another workspace's id answers exactly like an unknown one, so ids cannot be probed.
    """
    row = get_by_id(session, model, row_id)
    if row is None or getattr(row, "workspace_id", None) != ctx.workspace.id:
        raise NotFound(f"{what} {row_id} not found")
    return row
