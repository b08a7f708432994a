"""Workspaces and their members; users are created by administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import AdminUser, CurrentUser, SessionDep, Workspace
from app.api.schemas.users import UserCreate, UserRead
from app.api.schemas.workspaces import (
    MemberCreate,
    MemberRead,
    MemberUpdate,
    WorkspaceCreate,
    WorkspaceWithRole,
)
from app.db.models import Role
from app.services.workspaces import access as workspace_access
from app.services.workspaces import members as workspace_members
from app.services.workspaces import service as workspaces
from app.services.workspaces import users

router = APIRouter(prefix="/api/v1", tags=["workspaces"])


@router.get("/workspaces", response_model=list[WorkspaceWithRole])
def read_workspaces(session: SessionDep, user: CurrentUser) -> list[WorkspaceWithRole]:
    return [
        WorkspaceWithRole(id=ws.id, name=ws.name, slug=ws.slug, role=role)
        for ws, role in workspace_access.list_for_user(session=session, user=user)
    ]


@router.post("/workspaces", response_model=WorkspaceWithRole, status_code=status.HTTP_201_CREATED)
def create_workspace(
    body: WorkspaceCreate, session: SessionDep, user: CurrentUser
) -> WorkspaceWithRole:
    ws = workspaces.create_workspace(session=session, name=body.name, owner=user)
    return WorkspaceWithRole(id=ws.id, name=ws.name, slug=ws.slug, role=Role.owner)


@router.get("/members", response_model=list[MemberRead])
def read_members(session: SessionDep, ctx: Workspace) -> list[MemberRead]:
    members = workspace_members.list_members(session=session, ctx=ctx)
    return [MemberRead(user_id=m.user_id, email=m.user.email, role=Role(m.role)) for m in members]


@router.post("/members", response_model=MemberRead, status_code=status.HTTP_201_CREATED)
def add_member(body: MemberCreate, session: SessionDep, ctx: Workspace) -> MemberRead:
    membership = workspace_members.add_member(
        session=session, ctx=ctx, email=body.email, role=body.role
    )
    return MemberRead(
        user_id=membership.user_id, email=membership.user.email, role=Role(membership.role)
    )


@router.patch("/members/{user_id}", response_model=MemberRead)
def update_member(
    user_id: Annotated[int, Path(description="The member's user id (as listed by GET /members).")],
    body: MemberUpdate,
    session: SessionDep,
    ctx: Workspace,
) -> MemberRead:
    """Owners only; demoting the workspace's last owner is refused (409)."""
    membership = workspace_members.change_member_role(
        session=session, ctx=ctx, user_id=user_id, role=body.role
    )
    return MemberRead(
        user_id=membership.user_id, email=membership.user.email, role=Role(membership.role)
    )


@router.delete("/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(
    user_id: Annotated[int, Path(description="The member's user id (as listed by GET /members).")],
    session: SessionDep,
    ctx: Workspace,
) -> None:
    """Owners only; removing the last owner is refused (409). The member's tokens and browser
    sessions lose this workspace on their next request."""
    workspace_members.remove_member(session=session, ctx=ctx, user_id=user_id)


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, admin: AdminUser) -> UserRead:
    user = users.create_user(
        session=session,
        email=body.email,
        password=body.password,
        is_admin=body.is_admin,
        created_by=admin,
    )
    return UserRead.model_validate(user)
