"""A run's log lines and per-step metrics merged into one newest-first timeline, paged by cursor.

This is what the OpenAI facade serves as a fine-tuning job's events: each RunEvent is one
entry and each training step that has metric points is one entry (all its values together).
Entries are ordered by time, newest first; a log line and a step at the same instant are
ordered log line first, then by id or step, so the order is total and a cursor is stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, func, or_, select
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.db.models import MetricPoint, RunEvent

Kind = Literal["step", "log"]
# Position of a kind among entries with the same timestamp (higher = newer).
_RANK: dict[Kind, int] = {"step": 0, "log": 1}


@dataclass(frozen=True)
class TimelineEntry:
    """A log line (`event` set) or a step's metrics (`values`); `seq` is the event id or step."""

    kind: Kind
    seq: int
    at: datetime
    event: RunEvent | None = None
    values: dict[str, float] = field(default_factory=dict)


def _older_than(
    kind: Kind,
    at: SQLColumnExpression[datetime],
    seq: SQLColumnExpression[int],
    cursor: TimelineEntry,
) -> ColumnElement[bool]:
    """Rows of `kind` that come after `cursor` in newest-first order."""
    rank, cursor_rank = _RANK[kind], _RANK[cursor.kind]
    if rank < cursor_rank:
        return at <= cursor.at
    if rank > cursor_rank:
        return at < cursor.at
    return or_(at < cursor.at, and_(at == cursor.at, seq < cursor.seq))


def _step_time() -> ColumnElement[datetime]:
    # A step's time is when its first point was written (evaluation may land a moment later).
    return func.min(MetricPoint.created_at)


def _locate(*, session: Session, run_id: int, kind: Kind, seq: int) -> TimelineEntry:
    if kind == "log":
        at = session.scalar(
            select(RunEvent.created_at).where(RunEvent.run_id == run_id, RunEvent.id == seq)
        )
    else:
        at = session.scalar(
            select(_step_time()).where(MetricPoint.run_id == run_id, MetricPoint.step == seq)
        )
    if at is None:
        raise ValidationFailed(
            f"the cursor names no event of this run ({kind} {seq})", param="after"
        )
    return TimelineEntry(kind=kind, seq=seq, at=at)


def page(
    *, session: Session, run_id: int, after: tuple[Kind, int] | None = None, limit: int = 20
) -> list[TimelineEntry]:
    """Up to `limit` entries, newest first, following the entry `after` = (kind, seq) if given."""
    cursor = None
    if after is not None:
        cursor = _locate(session=session, run_id=run_id, kind=after[0], seq=after[1])

    log_query = select(RunEvent).where(RunEvent.run_id == run_id)
    if cursor is not None:
        log_query = log_query.where(_older_than("log", RunEvent.created_at, RunEvent.id, cursor))
    logs = session.scalars(
        log_query.order_by(RunEvent.created_at.desc(), RunEvent.id.desc()).limit(limit)
    ).all()

    step_time = _step_time().label("at")
    step_query = (
        select(MetricPoint.step, step_time)
        .where(MetricPoint.run_id == run_id)
        .group_by(MetricPoint.step)
    )
    if cursor is not None:
        step_query = step_query.having(_older_than("step", _step_time(), MetricPoint.step, cursor))
    steps = session.execute(
        step_query.order_by(step_time.desc(), MetricPoint.step.desc()).limit(limit)
    ).all()

    entries = [TimelineEntry(kind="log", seq=e.id, at=e.created_at, event=e) for e in logs]
    entries += [TimelineEntry(kind="step", seq=step, at=at) for step, at in steps]
    entries.sort(key=lambda e: (e.at, _RANK[e.kind], e.seq), reverse=True)
    entries = entries[:limit]

    wanted = [e.seq for e in entries if e.kind == "step"]
    values: dict[int, dict[str, float]] = {step: {} for step in wanted}
    if wanted:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.name, MetricPoint.value).where(
                MetricPoint.run_id == run_id, MetricPoint.step.in_(wanted)
            )
        ).all()
        for step, name, value in rows:
            values[step][name] = value
    return [
        TimelineEntry(kind="step", seq=e.seq, at=e.at, values=values[e.seq])
        if e.kind == "step"
        else e
        for e in entries
    ]
