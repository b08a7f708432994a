"""What every resource's shapes share: times answered with their UTC offset, and
the base of shapes read from database rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# The database keeps naive UTC times; a bare "2026-11-23T16:26:23" is not an RFC 3339
# date-time (the schema's `format`), and a client would read it as local time. So every time
# the API answers carries its offset: "2026-11-23T16:26:23+00:00".
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)
