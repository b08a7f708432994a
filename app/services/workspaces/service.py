"""Workspaces created (by their owner, or by an administrator for a team) and listed for
the administrators."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import Forbidden, ValidationFailed
from app.db.models import Membership, Role, User, Workspace
from app.services.workspaces import audit


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
