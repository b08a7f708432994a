"""A workspace's members: invited, given a role, removed, never leaving it without an owner.

Owners only; every change is written to the audit log in the change's own transaction.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound
from app.db.base import MAX_ID
from app.db.models import Membership, Role, User
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext, lock


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
