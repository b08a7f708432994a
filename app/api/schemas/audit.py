"""The audit log (docs/trust.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas.common import ORM, UtcDateTime


class AuditEventRead(ORM):
    id: int
    action: str = Field(description="`<resource>.<verb>`, e.g. `run.launch` (docs/trust.md).")
    actor_id: int | None
    actor_email: str | None = None
    target_type: str
    target_id: str
    detail: dict[str, Any]
    ip: str | None
    created_at: UtcDateTime


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next (older) page; null on the last page."
    )
