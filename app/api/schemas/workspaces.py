"""Workspaces and their members (admin and members' views)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM
from app.db.models import Role


class WorkspaceAdminCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    owner_email: str = Field(max_length=320, description="the account that will own it")


class WorkspaceAdminRead(BaseModel):
    id: int
    name: str
    slug: str
    created_at: datetime
    members: int
    owners: list[str]


class WorkspaceRead(ORM):
    id: int
    name: str
    slug: str


class WorkspaceWithRole(WorkspaceRead):
    role: Role


class WorkspaceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class MemberRead(BaseModel):
    user_id: int
    email: str
    role: Role


class MemberCreate(BaseModel):
    email: str = Field(max_length=320)
    role: Role = Role.viewer


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
