"""Declarative base with a naming convention so Alembic migrations name constraints stably."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Session

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Ids are INTEGER columns (32-bit on Postgres; SQLite cannot even bind an int past 64 bits), so
# an id from a request outside this range names no row: it must read as "not found", not crash
# the driver with a 500.
MAX_ID = 2**31 - 1
RowT = TypeVar("RowT", bound=Base)


def get_by_id(session: Session, model: type[RowT], row_id: int) -> RowT | None:
    """The row with this primary key, or None, also for ids no column could hold."""
    if not -MAX_ID <= row_id <= MAX_ID:
        return None
    return session.get(model, row_id)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
