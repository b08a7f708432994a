"""Users and sign-in: the first admin, login, the signed-in user and the admins' user pages."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM
from app.api.schemas.workspaces import WorkspaceWithRole


class FirstAdminCreate(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LoginRequest(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class UserRead(ORM):
    id: int
    email: str
    is_admin: bool


class SessionRead(BaseModel):
    """A signed-in session; cookie-authenticated writes send `csrf_token` as X-CSRF-Token."""

    user: UserRead
    csrf_token: str


class UserCreate(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    is_admin: bool = False


class UserAdminRead(UserRead):
    is_active: bool
    created_at: datetime


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_active: bool = Field(
        description="false disables the account: no sign-in, its sessions and tokens stop working"
    )


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(max_length=1024)


class MeRead(BaseModel):
    user: UserRead
    workspace: WorkspaceWithRole
    workspaces: list[WorkspaceWithRole]
