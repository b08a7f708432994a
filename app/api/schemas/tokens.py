"""API tokens: created once with their secret, listed without it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas.common import ORM, UtcDateTime


class TokenCreate(BaseModel):
    name: str = Field("api", min_length=1, max_length=100)


class TokenRead(ORM):
    id: int
    name: str
    prefix: str
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret; shown only once.")
