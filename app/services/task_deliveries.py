"""Counts how often each task message was delivered without finishing: the poison limit.

workers/delivery_guard.py calls `count` as a task starts and `forget` when it ends in its own
process (succeeded or raised); a row that stays is a delivery whose worker was lost.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import TaskDelivery
from app.db.session import upsert_insert

KEEP_FOR = timedelta(days=7)


def count(*, session: Session, task_id: str, task_name: str) -> int:
    """Record one more delivery of `task_id`; returns how many there have been (atomic)."""
    now = utcnow()
    insert = upsert_insert(session, TaskDelivery).values(
        task_id=task_id[:155], task_name=task_name[:100], deliveries=1, first_at=now, last_at=now
    )
    statement = insert.on_conflict_do_update(
        index_elements=[TaskDelivery.task_id],
        set_={"deliveries": TaskDelivery.deliveries + 1, "last_at": now},
    ).returning(TaskDelivery.deliveries)
    deliveries = int(session.execute(statement).scalar_one())
    session.commit()
    return deliveries


def forget(*, session: Session, task_id: str) -> None:
    """The task ended in its process: its deliveries no longer count (and rows stay few)."""
    session.execute(delete(TaskDelivery).where(TaskDelivery.task_id == task_id[:155]))
    cutoff = utcnow() - KEEP_FOR
    session.execute(delete(TaskDelivery).where(TaskDelivery.last_at < cutoff))
    session.commit()
