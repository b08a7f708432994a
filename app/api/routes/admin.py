"""Server administration: user accounts (list, disable, reset a password) and every workspace.

Administrators only: anyone else gets a 403. Creating an account is `POST /api/v1/users`
(workspaces.py), as it was before these endpoints.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import AdminUser, SessionDep
from app.api.schemas.users import PasswordReset, UserAdminRead, UserUpdate
from app.api.schemas.workspaces import WorkspaceAdminCreate, WorkspaceAdminRead
from app.services.workspaces import service as workspaces
from app.services.workspaces import users

router = APIRouter(prefix="/api/v1", tags=["administration"])

UserId = Annotated[int, Path(description="The user's id (as listed by GET /users).")]


@router.get("/users", response_model=list[UserAdminRead])
def read_users(session: SessionDep, admin: AdminUser) -> list[UserAdminRead]:
    return [UserAdminRead.model_validate(u) for u in users.list_users(session=session, admin=admin)]


@router.patch("/users/{user_id}", response_model=UserAdminRead)
def update_user(
    user_id: UserId, body: UserUpdate, session: SessionDep, admin: AdminUser
) -> UserAdminRead:
    """Disable an account (no sign-in; its sessions and tokens stop working at once) or enable
    it again. Disabling one's own account is refused (409)."""
    user = users.set_active(session=session, admin=admin, user_id=user_id, active=body.is_active)
    return UserAdminRead.model_validate(user)


@router.post("/users/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(
    user_id: UserId, body: PasswordReset, session: SessionDep, admin: AdminUser
) -> None:
    """Set a new password (the same strength rules as everywhere); their browser sessions end."""
    users.reset_password(session=session, admin=admin, user_id=user_id, password=body.password)


@router.get("/admin/workspaces", response_model=list[WorkspaceAdminRead])
def read_all_workspaces(session: SessionDep, admin: AdminUser) -> list[WorkspaceAdminRead]:
    return [_summary(s) for s in workspaces.list_all(session=session, admin=admin)]


@router.post(
    "/admin/workspaces", response_model=WorkspaceAdminRead, status_code=status.HTTP_201_CREATED
)
def create_workspace(
    body: WorkspaceAdminCreate, session: SessionDep, admin: AdminUser
) -> WorkspaceAdminRead:
    """A workspace owned by `owner_email`'s account (which must exist and be enabled)."""
    ws = workspaces.create_for_owner(
        session=session, admin=admin, name=body.name, owner_email=body.owner_email
    )
    return WorkspaceAdminRead(
        id=ws.id, name=ws.name, slug=ws.slug, created_at=ws.created_at, members=1,
        owners=[body.owner_email.strip().lower()],
    )  # fmt: skip


def _summary(summary: workspaces.WorkspaceSummary) -> WorkspaceAdminRead:
    ws = summary.workspace
    return WorkspaceAdminRead(
        id=ws.id,
        name=ws.name,
        slug=ws.slug,
        created_at=ws.created_at,
        members=summary.members,
        owners=summary.owners,
    )
