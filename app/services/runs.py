"""Runs as seen by users: launch, list, inspect, cancel. Scoped to the caller's workspace."""

from __future__ import annotations

import re
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.core import task_queue
from app.core.errors import InvalidTransition, ValidationFailed
from app.db.base import utcnow
from app.db.models import Checkpoint, MetricPoint, Role, Run, RunEvent, RunStatus
from app.services import base_models, dataset_versions, datasets
from app.services.run_config import RunConfig
from app.services.workspaces import WorkspaceContext, get_in_workspace

_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# Steps a new chart is sent in full; a longer run's history is thinned to this many (see
# history_rows): a 100k-point run's first message is no bigger than a 4k-point run's.
HISTORY_STEPS = 2_000


def create_run(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    config: RunConfig,
    base_model: str = "scratch-tiny",
    validation_dataset_id: int | None = None,
    name: str | None = None,
    suffix: str | None = None,
    dataset_version_id: int | None = None,
) -> Run:
    """Record a queued run and hand it to the `gpu` queue.

    The row is committed before the task is sent (so the worker can always see it); if the
    broker refuses the task the row is deleted again, so a failed launch leaves nothing.
    """
    ctx.require(Role.editor)
    base_models.require_known(base_model)
    dataset = datasets.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    version = dataset_versions.version_for_run(
        session=session, ctx=ctx, dataset=dataset, version_id=dataset_version_id
    )
    if validation_dataset_id is not None:
        datasets.get_for_member(session=session, ctx=ctx, dataset_id=validation_dataset_id)
    if suffix is not None and not _SUFFIX_RE.match(suffix):
        raise ValidationFailed("suffix must be 1 to 40 letters, digits, '-' or '_'", param="suffix")
    run = Run(
        workspace_id=ctx.workspace.id,
        name=(name or "").strip()[:255] or f"{base_model} on {dataset.name}",
        base_model=base_model,
        dataset_id=dataset.id,
        validation_dataset_id=validation_dataset_id,
        dataset_version_id=version.id if version is not None else None,
        config=config.model_dump(),
        suffix=suffix,
        status=RunStatus.queued,
        created_by_id=ctx.user.id,
    )
    session.add(run)
    session.flush()
    session.add(RunEvent(run_id=run.id, message=f"run created by {ctx.user.email}; queued"))
    session.commit()
    try:
        run.task_id = task_queue.enqueue_training(run.id)
    except Exception:
        session.delete(run)
        session.commit()
        raise
    session.commit()
    return run


def get_for_member(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    return get_in_workspace(session=session, ctx=ctx, model=Run, row_id=run_id, what="run")


def list_for_workspace(
    *,
    session: Session,
    ctx: WorkspaceContext,
    limit: int = 50,
    offset: int = 0,
    with_dataset: bool = False,
) -> list[Run]:
    query = select(Run).where(Run.workspace_id == ctx.workspace.id)
    if with_dataset:  # the run tables show each run's dataset: one join, not one query per run
        query = query.options(joinedload(Run.dataset))
    return list(session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)))


def page_for_workspace(
    *, session: Session, ctx: WorkspaceContext, before_id: int | None = None, limit: int = 20
) -> list[Run]:
    """Newest first, starting below `before_id` (the OpenAI facade's `after` cursor)."""
    query = select(Run).where(Run.workspace_id == ctx.workspace.id)
    if before_id is not None:
        query = query.where(Run.id < before_id)
    return list(session.scalars(query.order_by(Run.id.desc()).limit(limit)))


def count_for_workspace(*, session: Session, ctx: WorkspaceContext) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Run).where(Run.workspace_id == ctx.workspace.id)
        )
        or 0
    )


def cancel(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """Queued runs end at once; running ones are flagged and the worker stops within a step."""
    ctx.require(Role.editor)
    run = get_for_member(session=session, ctx=ctx, run_id=run_id)
    status = RunStatus(run.status)
    if status.is_terminal:
        raise InvalidTransition(f"run {run.id} is already {status}; it cannot be cancelled")
    if status in (RunStatus.queued, RunStatus.interrupted):
        run.status = RunStatus.cancelled
        run.finished_at = utcnow()
    run.cancel_requested = True
    session.add(RunEvent(run_id=run.id, message=f"cancellation requested by {ctx.user.email}"))
    session.commit()
    return run


class MetricRow(NamedTuple):  # a tuple: a run's history is thousands of them
    id: int
    step: int
    name: str
    value: float


def metric_rows(
    *, session: Session, run_id: int, after_step: int = -1, after_id: int = 0, limit: int = 50_000
) -> list[MetricRow]:
    """Points after a step (a reconnecting browser) or after an id (the live cursor)."""
    rows = session.execute(
        select(MetricPoint.id, MetricPoint.step, MetricPoint.name, MetricPoint.value)
        .where(
            MetricPoint.run_id == run_id,
            MetricPoint.step > after_step,
            MetricPoint.id > after_id,
        )
        .order_by(MetricPoint.id)
        .limit(limit)
    ).all()
    return [MetricRow(*row) for row in rows]


def metric_page(
    *, session: Session, run_id: int, after_step: int = -1, steps: int = 1_000
) -> list[MetricRow]:
    """Every point of the first `steps` steps after `after_step`: whole steps only, so a client
    that asks again with `after_step` = the last step it got misses nothing."""
    where = (MetricPoint.run_id == run_id, MetricPoint.step > after_step)
    last_step = session.scalar(select(func.max(MetricPoint.step)).where(*where))
    if last_step is not None and last_step - after_step > steps:  # maybe more than `steps`
        last_step = session.scalar(
            select(MetricPoint.step)
            .where(*where)
            .group_by(MetricPoint.step)
            .order_by(MetricPoint.step)
            .offset(steps - 1)
            .limit(1)
        )
    query = select(MetricPoint.id, MetricPoint.step, MetricPoint.name, MetricPoint.value)
    query = query.where(*where)
    if last_step is not None:
        query = query.where(MetricPoint.step <= last_step)
    return [MetricRow(*row) for row in session.execute(query.order_by(MetricPoint.id))]


def history_rows(
    *, session: Session, run_id: int, max_steps: int = HISTORY_STEPS
) -> tuple[list[MetricRow], int]:
    """What a new chart starts from, and the newest point id it covers (the live cursor).

    A run of up to `max_steps` steps: every point. A longer one (100k+ points): its steps cut
    into `max_steps` equal ranges and the newest point of each metric in each range — the
    curve's shape, every metric's latest value, a bounded message. A reconnecting chart asks
    with `after_step` instead (`metric_rows`) and gets exactly the points it is missing.
    """
    where = MetricPoint.run_id == run_id
    newest_id = session.scalar(select(func.max(MetricPoint.id)).where(where))
    if newest_id is None:
        return [], 0
    first = session.scalar(select(func.min(MetricPoint.step)).where(where)) or 0
    last = session.scalar(select(func.max(MetricPoint.step)).where(where)) or 0
    if last - first < max_steps:
        rows = metric_rows(session=session, run_id=run_id)
        return rows, rows[-1].id if rows else 0
    width = -(-(last - first + 1) // max_steps)  # ceiling division
    picked = (
        select(func.max(MetricPoint.id))
        .where(where, MetricPoint.id <= newest_id)
        .group_by(MetricPoint.name, (MetricPoint.step - first) // width)
    )
    rows = session.execute(
        select(MetricPoint.id, MetricPoint.step, MetricPoint.name, MetricPoint.value)
        .where(MetricPoint.id.in_(picked))
        .order_by(MetricPoint.id)
    ).all()
    return [MetricRow(*row) for row in rows], newest_id


def group_by_step(rows: list[MetricRow]) -> list[dict[str, float | int]]:
    points: dict[int, dict[str, float | int]] = {}
    for row in rows:
        points.setdefault(row.step, {"step": row.step})[row.name] = row.value
    return [points[step] for step in sorted(points)]


def latest_metrics(*, session: Session, run_id: int) -> dict[str, float]:
    """Each metric's newest value: one aggregate query, not every point of the run."""
    newest = (
        select(func.max(MetricPoint.id))
        .where(MetricPoint.run_id == run_id)
        .group_by(MetricPoint.name)
    )
    rows = session.execute(
        select(MetricPoint.name, MetricPoint.value).where(MetricPoint.id.in_(newest))
    )
    return {name: value for name, value in rows}


def events(*, session: Session, run_id: int, after_id: int = 0, limit: int = 200) -> list[RunEvent]:
    return list(
        session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.id > after_id)
            .order_by(RunEvent.id.desc())
            .limit(limit)
        )
    )[::-1]


def checkpoints(*, session: Session, run_id: int) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step)
        )
    )


def progress(run: Run) -> dict[str, float | int | str | None]:
    """Status, step and an ETA from the pace so far (what the run page's progress bar shows)."""
    eta_s: float | None = None
    if run.status == RunStatus.running and run.started_at and run.total_steps and run.step > 0:
        elapsed = (utcnow() - run.started_at).total_seconds()
        eta_s = max(0.0, elapsed / run.step * (run.total_steps - run.step))
    return {
        "status": run.status,
        "step": run.step,
        "total_steps": run.total_steps,
        "eta_s": eta_s,
        "error": run.error,
    }
