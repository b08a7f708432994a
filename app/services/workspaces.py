"""Workspaces, memberships and the role checks every scoped query relies on."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.db.base import MAX_ID, Base, get_by_id
from app.db.models import Membership, Role, User, Workspace
from app.services import audit

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


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "workspace"
    return slug


def create_workspace(*, session: Session, name: str, owner: User) -> Workspace:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("a workspace name must have 1 to 100 characters", param="name")
    slug = _slugify(name)
    if session.scalar(select(Workspace).where(Workspace.slug == slug)) is not None:
        slug = f"{slug}-{secrets.token_hex(3)}"
    workspace = Workspace(name=name, slug=slug)
    session.add(workspace)
    session.flush()
    session.add(Membership(user_id=owner.id, workspace_id=workspace.id, role=Role.owner))
    audit.record(
        session=session,
        actor=owner,
        action="workspace.create",
        target_type="workspace",
        target_id=workspace.id,
        detail={"name": name},
        workspace_id=workspace.id,
    )
    session.flush()
    return workspace


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


def list_members(*, session: Session, ctx: WorkspaceContext) -> list[Membership]:
    return list(
        session.scalars(
            select(Membership)
            .where(Membership.workspace_id == ctx.workspace.id)
            .order_by(Membership.id)
        )
    )


def add_member(*, session: Session, ctx: WorkspaceContext, email: str, role: Role) -> Membership:
    ctx.require(Role.owner)
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(
            f"no user with e-mail {email}; an administrator must create the account first"
        )
    existing = session.scalar(
        select(Membership).where(
            Membership.workspace_id == ctx.workspace.id, Membership.user_id == user.id
        )
    )
    if existing is not None:
        raise Conflict(f"{user.email} is already a member of this workspace")
    membership = Membership(user_id=user.id, workspace_id=ctx.workspace.id, role=role)
    session.add(membership)
    audit.record(
        session=session,
        actor=ctx,
        action="member.invite",
        target_type="user",
        target_id=user.id,
        detail={"email": user.email, "role": str(role)},
    )
    session.flush()
    return membership


def get_member(*, session: Session, ctx: WorkspaceContext, user_id: int) -> Membership:
    """The membership of user `user_id` in the caller's workspace, or NotFound.

    An unknown user and another workspace's member answer alike, so user ids cannot be probed.
    """
    membership = (
        session.scalar(
            select(Membership).where(
                Membership.workspace_id == ctx.workspace.id, Membership.user_id == user_id
            )
        )
        if -MAX_ID <= user_id <= MAX_ID
        else None
    )
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of this workspace")
    return membership


def _lock_members(*, session: Session, ctx: WorkspaceContext) -> None:
    """Serialize membership changes of one workspace until the caller's commit.

    Without it two owners demoting each other at once would both see "another owner is left"
    and leave the workspace with none.
    """
    lock(session=session, ctx=ctx)


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


def _refuse_losing_last_owner(
    *, session: Session, ctx: WorkspaceContext, membership: Membership, verb: str
) -> None:
    if membership.role != Role.owner:
        return
    owners = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.workspace_id == ctx.workspace.id, Membership.role == Role.owner)
    )
    if (owners or 0) <= 1:
        raise Conflict(
            f"cannot {verb} {membership.user.email}: they are the last owner of workspace "
            f"'{ctx.workspace.name}'; make another member an owner first"
        )


def change_member_role(
    *, session: Session, ctx: WorkspaceContext, user_id: int, role: Role
) -> Membership:
    """Owners only. Setting the role a member already has changes (and logs) nothing."""
    ctx.require(Role.owner)
    _lock_members(session=session, ctx=ctx)
    membership = get_member(session=session, ctx=ctx, user_id=user_id)
    old = Role(membership.role)
    if old == role:
        return membership
    if role != Role.owner:
        _refuse_losing_last_owner(session=session, ctx=ctx, membership=membership, verb="demote")
    membership.role = role
    audit.record(
        session=session,
        actor=ctx,
        action="member.role_change",
        target_type="user",
        target_id=user_id,
        detail={"email": membership.user.email, "from": str(old), "to": str(role)},
    )
    session.flush()
    return membership


def remove_member(*, session: Session, ctx: WorkspaceContext, user_id: int) -> Membership:
    """Owners only; an owner may remove themselves while another owner remains.

    Takes effect on the member's next request: every request resolves its workspace from the
    memberships table (`context_for`), for API tokens and browser sessions alike.
    """
    ctx.require(Role.owner)
    _lock_members(session=session, ctx=ctx)
    membership = get_member(session=session, ctx=ctx, user_id=user_id)
    _refuse_losing_last_owner(session=session, ctx=ctx, membership=membership, verb="remove")
    audit.record(
        session=session,
        actor=ctx,
        action="member.remove",
        target_type="user",
        target_id=user_id,
        detail={"email": membership.user.email, "role": str(membership.role)},
    )
    session.delete(membership)
    session.flush()
    return membership


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


# --- administration -------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkspaceSummary:
    """One workspace as the administrators' list shows it."""

    workspace: Workspace
    members: int
    owners: list[str]


def list_all(*, session: Session, admin: User) -> list[WorkspaceSummary]:
    """Every workspace of the server with its member count and owners (administrators only)."""
    if not admin.is_admin:
        raise Forbidden("only a server administrator can list every workspace")
    counts = dict(
        session.execute(
            select(Membership.workspace_id, func.count()).group_by(Membership.workspace_id)
        ).all()
    )
    owners: dict[int, list[str]] = {}
    for workspace_id, email in session.execute(
        select(Membership.workspace_id, User.email)
        .join(User, User.id == Membership.user_id)
        .where(Membership.role == Role.owner)
        .order_by(User.email)
    ):
        owners.setdefault(workspace_id, []).append(email)
    return [
        WorkspaceSummary(ws, int(counts.get(ws.id, 0)), owners.get(ws.id, []))
        for ws in session.scalars(select(Workspace).order_by(Workspace.id))
    ]


def create_for_owner(*, session: Session, admin: User, name: str, owner_email: str) -> Workspace:
    """An administrator makes a workspace for a team: `owner_email`'s account owns it (the
    administrator becomes a member only if they name themselves)."""
    if not admin.is_admin:
        raise Forbidden("only a server administrator can create a workspace for someone else")
    owner = session.scalar(select(User).where(User.email == owner_email.strip().lower()))
    if owner is None:
        raise ValidationFailed(
            f"no user with e-mail {owner_email}; create the account first", param="owner_email"
        )
    if not owner.is_active:
        raise ValidationFailed(f"{owner.email}'s account is disabled", param="owner_email")
    return create_workspace(session=session, name=name, owner=owner)
