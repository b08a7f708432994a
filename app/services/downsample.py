"""Series downsampling that keeps each bucket's first, last, minimum and maximum point.

A chart never needs more points than it has pixels, but it must not lie: averaging or picking
every n-th point hides a loss spike, and dropping the ends moves the curve. So a series is cut
into buckets of equal step ranges and each bucket keeps (at most) four points: its first, its
last, its lowest and its highest. The result is at most `4 * buckets` points, its ends are the
series' ends, and its minimum and maximum are the series' minimum and maximum.

Two implementations with the same rules: `downsample` for a series in memory (the reference,
and what property tests check) and `extremes_query`, the same selection done by the database
with window functions (SQLite >= 3.25 and Postgres), so a million-point series never travels
to Python. Ties are broken alike: the earliest step wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select

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
        # min()/max() return the first of equal values: the earliest step, as in the SQL.
        lowest = min(members, key=lambda p: p[1])
        highest = max(members, key=lambda p: p[1])
        picked = {members[0], members[-1], lowest, highest}
        kept.extend(sorted(picked, key=lambda p: p[0]))
        start = end
    return kept


def extremes_query(
    *,
    where: Sequence[ColumnElement[bool]],
    bucket: ColumnElement[int],
    partition: Sequence[ColumnElement[Any]] = (),
    columns: Sequence[ColumnElement[Any]] = (
        MetricPoint.id,
        MetricPoint.step,
        MetricPoint.name,
        MetricPoint.value,
    ),
) -> Select[Any]:
    """The metric points matching `where` that are first, last, lowest or highest of their
    bucket (within `partition`, e.g. per metric name); `columns` of each, in no set order.

    One pass of window functions in the database: the rows themselves never reach Python.
    """
    groups = [*partition, bucket]
    step, value = MetricPoint.step, MetricPoint.value
    ranked = (
        select(
            *columns,
            func.row_number().over(partition_by=groups, order_by=step.asc()).label("r_first"),
            func.row_number().over(partition_by=groups, order_by=step.desc()).label("r_last"),
            func.row_number()
            .over(partition_by=groups, order_by=(value.asc(), step.asc()))
            .label("r_min"),
            func.row_number()
            .over(partition_by=groups, order_by=(value.desc(), step.asc()))
            .label("r_max"),
        )
        .where(*where)
        .subquery("ranked")
    )
    names = [c.key for c in columns if c.key is not None]
    return select(*(ranked.c[n] for n in names)).where(
        or_(
            ranked.c.r_first == 1,
            ranked.c.r_last == 1,
            ranked.c.r_min == 1,
            ranked.c.r_max == 1,
        )
    )
