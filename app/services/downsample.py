"""Series downsampling that keeps each bucket's first, last, minimum and maximum point.

A chart never needs more points than it has pixels, but it must not lie: averaging or picking
every n-th point hides a loss spike, and dropping the ends moves the curve. So a series is cut
into buckets of equal step ranges and each bucket keeps (at most) four points: its first, its
last, its lowest and its highest. The result is at most `4 * buckets` points, its ends are the
series' ends, and its minimum and maximum are the series' minimum and maximum.

Two implementations with the same rules: `downsample` for a series in memory (the reference,
and what property tests check) and `extremes_query`, the same selection done by the database
(SQLite and Postgres alike), so a million-point series never travels to Python. Ties are
broken alike: the lowest is the earliest of equal values, the highest the latest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from app.db.models import MetricPoint

POINTS_PER_BUCKET = 4


def bucket_width(first: int, last: int, buckets: int) -> int:
    """Steps per bucket so that steps first..last fall into at most `buckets` buckets."""
    return max(1, -(-(last - first + 1) // max(1, buckets)))  # ceiling division


def downsample(points: Sequence[tuple[int, float]], *, max_points: int) -> list[tuple[int, float]]:
    """At most `max_points` of `points` ((step, value) sorted by step, steps distinct).

    A series that already fits is returned whole. Non-finite values (NaN) are not expected:
    the database's ordering of them differs between backends.
    """
    if len(points) <= max_points:
        return list(points)
    buckets = max(1, max_points // POINTS_PER_BUCKET)
    first_step, last_step = points[0][0], points[-1][0]
    width = bucket_width(first_step, last_step, buckets)
    kept: list[tuple[int, float]] = []
    start = 0
    while start < len(points):
        bucket = (points[start][0] - first_step) // width
        end = start
        while end < len(points) and (points[end][0] - first_step) // width == bucket:
            end += 1
        members = points[start:end]
        # Ordered by (value, step), as the SQL ranks them: of equal values the lowest is the
        # earliest step, the highest the latest.
        lowest = min(members, key=lambda p: (p[1], p[0]))
        highest = max(members, key=lambda p: (p[1], p[0]))
        picked = {members[0], members[-1], lowest, highest}
        kept.extend(sorted(picked, key=lambda p: p[0]))
        start = end
    return kept


def extremes_query(
    *,
    where: Sequence[ColumnElement[bool]],
    bucket: ColumnElement[int],
    by_name: bool = False,
    columns: Sequence[ColumnElement[Any] | InstrumentedAttribute[Any]] = (
        MetricPoint.id,
        MetricPoint.step,
        MetricPoint.name,
        MetricPoint.value,
    ),
) -> Select[Any]:
    """`columns` of the metric points matching `where` that are first, last, lowest or highest
    of their bucket (per metric name if `by_name`), in no set order.

    One sort of the series by (bucket, value, step), shared by every window: the bucket's
    first and last step, its size, and each point's rank by value (rank 1 is the lowest, the
    last rank the highest). The rows never reach Python. Ranking by value and by step in
    separate windows sorted the series four times and took 2.5 times as long; aggregates
    joined back to the series were fast only while the planner had fresh statistics, which a
    run being written does not have.
    """
    mp = MetricPoint
    groups = [*([mp.name] if by_name else []), bucket]
    ranked = (
        select(
            *columns,
            mp.step.label("pick_step"),
            func.min(mp.step).over(partition_by=groups).label("first_step"),
            func.max(mp.step).over(partition_by=groups).label("last_step"),
            func.count().over(partition_by=groups).label("size"),
            func.row_number()
            .over(partition_by=groups, order_by=(mp.value.asc(), mp.step.asc()))
            .label("value_rank"),
        )
        .where(*where)
        .subquery("ranked")
    )
    c = ranked.c
    names = [col.key for col in columns if col.key is not None]
    return select(*(c[n] for n in names)).where(
        or_(
            c.pick_step == c.first_step,
            c.pick_step == c.last_step,
            c.value_rank == 1,
            c.value_rank == c.size,
        )
    )
