"""Comparing runs: their config differences, final metrics and downsampled curves, and one
run's metrics as a streamed CSV or JSON download. Scoped to the caller's workspace."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.db.models import MetricPoint, Run
from app.db.session import session_scope
from app.services import downsample
from app.services.runs import access as run_access
from app.services.workspaces.access import WorkspaceContext

MAX_RUNS = 10  # a chart with more lines than this is unreadable anyway
DEFAULT_POINTS = 1_000  # per series: about a chart's width in pixels
MAX_POINTS = 5_000
EXPORT_PAGE = 5_000  # rows read per query while streaming a download


# --- which runs ---------------------------------------------------------------------------
def runs_for_compare(
    *, session: Session, ctx: WorkspaceContext, run_ids: Sequence[int]
) -> list[Run]:
    """The runs, in the order asked, each in the caller's workspace (else NotFound)."""
    unique = list(dict.fromkeys(run_ids))
    if not unique:
        raise ValidationFailed("choose at least one run to compare", param="run_ids")
    if len(unique) > MAX_RUNS:
        raise ValidationFailed(f"compare at most {MAX_RUNS} runs at once", param="run_ids")
    return [run_access.get_for_member(session=session, ctx=ctx, run_id=run_id) for run_id in unique]


# --- config differences -------------------------------------------------------------------
MISSING: Any = object()  # a key a run's config does not have (unlike a key set to null)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys ({"lora": {"r": 8}} -> {"lora.r": 8}); other values
    (lists included) stay whole. An empty mapping stays a value, so it is not lost."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; in a config they are different settings.
    if a is MISSING or b is MISSING:
        return a is b
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def comparable_settings(run: Run) -> dict[str, Any]:
    """What a run was launched with: its model, data and hyperparameters, flattened."""
    return {
        "base_model": run.base_model,
        "dataset_id": run.dataset_id,
        "validation_dataset_id": run.validation_dataset_id,
        **flatten(run.config or {}),
    }


@dataclass(frozen=True)
class ConfigDifference:
    """One key whose value is not the same in every run; `values` in the runs' order,
    MISSING where a run has no such key."""

    key: str
    values: list[Any]


def config_diff(settings: Sequence[Mapping[str, Any]]) -> list[ConfigDifference]:
    """Exactly the keys whose values differ between the given (flattened) settings, sorted."""
    keys = sorted({key for one in settings for key in one})
    diffs = []
    for key in keys:
        values = [one.get(key, MISSING) for one in settings]
        if any(not _same(values[0], v) for v in values[1:]):
            diffs.append(ConfigDifference(key=key, values=values))
    return diffs


# --- final metrics ------------------------------------------------------------------------
def metric_names(*, session: Session, run_ids: Sequence[int]) -> list[str]:
    """Every metric any of the runs reported, sorted (a distinct over the unique index)."""
    return list(
        session.scalars(
            select(MetricPoint.name)
            .where(MetricPoint.run_id.in_(run_ids))
            .distinct()
            .order_by(MetricPoint.name)
        )
    )


# --- curves -------------------------------------------------------------------------------
@dataclass
class Series:
    """One run's curve of one metric: `points` are (step, seconds since the run's first
    metric point, value), at most the requested number; `total` is how many the run has."""

    run_id: int
    total: int
    points: list[tuple[int, float, float | None]] = field(default_factory=list)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN or infinity


def series(*, session: Session, run: Run, metric: str, max_points: int) -> Series:
    """The run's `metric`, downsampled in the database to at most `max_points` points."""
    where = (MetricPoint.run_id == run.id, MetricPoint.name == metric)
    first, last, total = session.execute(
        select(func.min(MetricPoint.step), func.max(MetricPoint.step), func.count()).where(*where)
    ).one()
    if not total:
        return Series(run_id=run.id, total=0)
    origin: datetime | None = session.scalar(
        select(MetricPoint.created_at)
        .where(MetricPoint.run_id == run.id)
        .order_by(MetricPoint.id)
        .limit(1)
    )
    columns = (MetricPoint.step, MetricPoint.value, MetricPoint.created_at)
    if total <= max_points:
        query = select(*columns).where(*where)
    else:
        width = downsample.bucket_width(first, last, max_points // downsample.POINTS_PER_BUCKET)
        query = downsample.extremes_query(
            where=where, bucket=(MetricPoint.step - first) // width, columns=columns
        )
    rows = sorted(session.execute(query).all(), key=lambda row: row[0])
    return Series(
        run_id=run.id,
        total=int(total),
        points=[
            (
                step,
                round((at - origin).total_seconds(), 3) if origin and at else 0.0,
                finite(value),
            )
            for step, value, at in rows
        ],
    )


# --- downloads ----------------------------------------------------------------------------
def _pages(run_id: int) -> Iterator[list[tuple[int, str, float, datetime]]]:
    """A run's points ordered by (step, name), a page at a time by keyset on the unique index.

    Each page opens its own short session: a slow download holds no connection while the
    client reads, and memory stays one page whatever the run's size.
    """
    after: tuple[int, str] | None = None
    while True:
        with session_scope() as session:
            query = select(
                MetricPoint.step, MetricPoint.name, MetricPoint.value, MetricPoint.created_at
            ).where(MetricPoint.run_id == run_id)
            if after is not None:
                step, name = after
                query = query.where(
                    or_(
                        MetricPoint.step > step,
                        and_(MetricPoint.step == step, MetricPoint.name > name),
                    )
                )
            rows = [
                (row[0], row[1], row[2], row[3])
                for row in session.execute(
                    query.order_by(MetricPoint.step, MetricPoint.name).limit(EXPORT_PAGE)
                )
            ]
        if not rows:
            return
        yield rows
        if len(rows) < EXPORT_PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


def _iso(at: datetime | None) -> str:
    # Stored as naive UTC (app.db.base.utcnow): say so, or a spreadsheet reads local time.
    if at is None:
        return ""
    return at.isoformat() + "Z" if at.tzinfo is None else at.isoformat()


def export_csv(*, run_id: int) -> Iterator[str]:
    """`step,metric,value,time` lines (long format: exact whatever metrics a step has)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "metric", "value", "time"])
    for rows in _pages(run_id):
        for step, name, value, at in rows:
            writer.writerow([step, name, repr(value), _iso(at)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def export_head(run: Run) -> dict[str, Any]:
    """What a JSON download says about its run (read while the request's session is open)."""
    return {"id": run.id, "name": run.name, "status": run.status}


def export_json(*, head: Mapping[str, Any]) -> Iterator[str]:
    """One JSON document, `{"run": {...}, "points": [{step, metric, value, time}, ...]}`,
    written a page at a time. Non-finite values are null (JSON has no NaN)."""
    yield '{"run": ' + json.dumps(dict(head)) + ', "points": ['
    first = True
    for rows in _pages(int(head["id"])):
        items = [
            json.dumps({"step": step, "metric": name, "value": finite(value), "time": _iso(at)})
            for step, name, value, at in rows
        ]
        yield ("" if first else ",") + ",".join(items)
        first = False
    yield "]}\n"
