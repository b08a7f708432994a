"""Runs as seen by users: launch, list, inspect, cancel. Scoped to the caller's workspace."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.core.errors import InvalidTransition, ValidationFailed
from app.db.base import utcnow
from app.db.models import Checkpoint, MetricPoint, ModelVersion, Role, Run, RunEvent, RunStatus
from app.domain import lifecycle
from app.services import fleet
from app.services.datasets import access as dataset_access
from app.services.datasets import versions as dataset_versions
from app.services.registry import base_models, version_bases
from app.services.runs import presets as run_presets
from app.services.runs import queue as run_queue
from app.services.runs.access import get_for_editor
from app.services.runs.config import TASK_SCHEMAS, RunConfig
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext

_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# Steps a new chart is sent in full; a longer run's history is thinned to this many (see
# chart_history.history_rows): a 100k-point run's first message is no bigger than a 4k-point
# run's.
HISTORY_STEPS = 2_000


def create_run(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    config: RunConfig,
    base_model: str | None = None,
    validation_dataset_id: int | None = None,
    name: str | None = None,
    suffix: str | None = None,
    dataset_version_id: int | None = None,
    priority: str = "normal",
    sweep_fields: dict[str, Any] | None = None,
) -> Run:
    """Record a queued run and let the dispatcher send it when a GPU slot is free.

    The row is committed before any task is sent (so the worker can always see it); if the
    broker refuses the dispatch the row is deleted again, so a failed launch leaves nothing.
    A run that waits for a slot is sent later (run_queue.dispatch, docs/queue.md).
    Without a base model the data chooses one (run_presets.default_base_model), and the
    base's preset fills the learning rate, epochs, sequence length and method not given.
    """
    ctx.require(Role.editor)
    priority_value = run_queue.parse_priority(priority)
    run_queue.check_launch_quota(session=session, workspace=ctx.workspace)
    run_queue.check_fleet_fits(nodes=config.nodes)
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    version = dataset_versions.version_for_run(
        session=session, ctx=ctx, dataset=dataset, version_id=dataset_version_id
    )
    schema = version.schema if version is not None else dataset.format
    base_model = base_model or run_presets.default_base_model(schema)
    # A known base, or one of the workspace's registered versions (SFT → DPO).
    model, base_version = version_bases.resolve(session=session, ctx=ctx, name=base_model)
    config = run_presets.with_presets(config, model)
    check_fit(model=model, schema=schema, config=config)
    teacher_version = _check_teacher(session=session, ctx=ctx, config=config)
    if validation_dataset_id is not None:
        dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=validation_dataset_id)
    if suffix is not None and not _SUFFIX_RE.match(suffix):
        raise ValidationFailed("suffix must be 1 to 40 letters, digits, '-' or '_'", param="suffix")
    run = Run(
        workspace_id=ctx.workspace.id,
        name=(name or "").strip()[:255] or f"{base_model} on {dataset.name}",
        base_model=base_model,
        dataset_id=dataset.id,
        validation_dataset_id=validation_dataset_id,
        dataset_version_id=version.id,
        config={
            **config.model_dump(),
            **({"base_version_id": base_version.id} if base_version is not None else {}),
            **({"teacher_version_id": teacher_version.id} if teacher_version is not None else {}),
        },
        suffix=suffix,
        status=RunStatus.queued,
        created_by_id=ctx.user.id,
        priority=priority_value,
        **(sweep_fields or {}),  # a sweep's trial: sweep_id, sweep_trial, sweep_params
    )
    session.add(run)
    session.flush()
    run.queue_rank = run.id
    session.add(RunEvent(run_id=run.id, message=f"run created by {ctx.user.email}; queued"))
    event = audit.record(
        session=session,
        actor=ctx,
        action="run.launch",
        target_type="run",
        target_id=run.id,
        detail={"name": run.name, "base_model": base_model, "dataset_id": dataset.id},
    )
    session.commit()
    try:
        run_queue.dispatch(session=session, started_now=run.id)
    except Exception:
        # The broker refused: the launch did not happen, neither the run nor its audit row
        # stays (the dispatcher's rollback left the run unsent).
        session.delete(event)
        session.delete(run)
        session.commit()
        raise
    session.refresh(run)
    return run


def _check_teacher(
    *, session: Session, ctx: WorkspaceContext, config: RunConfig
) -> ModelVersion | None:
    """The distillation teacher: a pretrained base model or a registered version (a scratch
    size has no weights to teach with)."""
    if config.teacher is None:
        return None
    teacher, version = version_bases.resolve(session=session, ctx=ctx, name=config.teacher)
    if teacher.source == "scratch" or teacher.path is None:
        raise ValidationFailed(
            f"{config.teacher} has no trained weights to teach with: choose a registered "
            "version or a pretrained model",
            param="teacher",
        )
    return version


def check_fit(*, model: base_models.BaseModel, schema: str, config: RunConfig) -> None:
    """Refuse a run whose data, task, model and method do not go together, naming the field."""
    task = config.task_for(schema)
    if schema not in TASK_SCHEMAS[task]:
        raise ValidationFailed(
            f"a {task} run needs a dataset of {' or '.join(TASK_SCHEMAS[task])} rows; "
            f"this one holds {schema} rows",
            param="task_type",
        )
    for field, message in config.knob_problems(task):
        raise ValidationFailed(message, param=field)
    if task not in model.tasks:
        raise ValidationFailed(
            f"{model.name} cannot be trained for {task} (it supports {', '.join(model.tasks)})",
            param="model",
        )
    if config.method != "full" and not model.supports_lora:
        raise ValidationFailed(
            "LoRA needs a transformer; train the LSTM with method full", param="method"
        )
    if config.method == "qlora" and model.source == "scratch":
        raise ValidationFailed(
            "QLoRA quantises a pretrained base; scratch models train with method full or lora",
            param="method",
        )
    if config.precision == "fp16" and fleet.training_has_gpu() is False:
        # fp16 needs CUDA (its loss scaling has no CPU path); refused now, not when the worker
        # picks the run up and fails it.
        raise ValidationFailed(
            "precision fp16 needs a CUDA GPU and no training worker of this server has one: "
            "use bf16 or fp32 (or auto)",
            param="precision",
        )
    if model.context_length and config.block_size > model.context_length:
        raise ValidationFailed(
            f"sequence length {config.block_size} exceeds {model.name}'s context length "
            f"of {model.context_length} tokens",
            param="block_size",
        )


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
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    status = RunStatus(run.status)
    if run.paused:  # cancelling a paused run makes its stop final: it is no longer paused
        run.paused = False
        session.add(RunEvent(run_id=run.id, message=f"cancelled by {ctx.user.email} while paused"))
        session.flush()
        return run
    if status.is_terminal:
        raise InvalidTransition(f"run {run.id} is already {status}; it cannot be cancelled")
    return _request_stop(
        session=session,
        ctx=ctx,
        run=run,
        event=f"cancellation requested by {ctx.user.email}",
        action="run.cancel",
    )


def pause(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """Stop a queued or running run so that it can be resumed later: the one pause behind
    `POST /api/v1/runs/{id}/pause`, the run page's Pause button and OpenAI's job pause.

    A pause is a cancel that remembers it was meant to be taken up again: the worker stops at
    the end of the step and saves a checkpoint, the run ends `cancelled` with `paused` set, and
    `resume` continues it from that checkpoint. Pausing a paused run changes nothing (as at
    OpenAI); a finished run, or one being cancelled or stopped and kept, is an
    InvalidTransition (409).
    """
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    status = RunStatus(run.status)
    if run.paused and (status == RunStatus.cancelled or run.cancel_requested):
        return run
    if status.is_terminal or run.cancel_requested:
        raise InvalidTransition(
            f"run {run.id} is {'being cancelled' if run.cancel_requested else status}; "
            "only a queued or running run can be paused"
        )
    if run.stop_requested:
        # Its worker is already saving the final model: the run ends succeeded and registered,
        # and resumes from there like any stopped run.
        raise InvalidTransition(
            f"run {run.id} is being stopped and kept; it ends succeeded with its model and can "
            "be resumed from there"
        )
    return _request_stop(
        session=session,
        ctx=ctx,
        run=run,
        event=f"pause requested by {ctx.user.email}",
        action="run.pause",
        pause=True,
    )


def _request_stop(
    *,
    session: Session,
    ctx: WorkspaceContext,
    run: Run,
    event: str,
    action: str,
    pause: bool = False,
) -> Run:
    """Flag a queued or running run to stop (a cancel, or with `pause` a pause): one that no
    worker holds ends cancelled at once, a running one is stopped by its worker within a step.
    Recorded as `event` on the run and `action` in the audit log."""
    status = RunStatus(run.status)
    if status in (RunStatus.queued, RunStatus.interrupted):  # no worker holds it: ends now
        lifecycle.transition(run, RunStatus.cancelled)
        run.finished_at = utcnow()
    run.cancel_requested = True
    if pause:
        run.paused = True
    session.add(RunEvent(run_id=run.id, message=event))
    audit.record(
        session=session,
        actor=ctx,
        action=action,
        target_type="run",
        target_id=run.id,
        detail={"status_before": str(status)},
    )
    session.commit()
    # A cancelled waiting or sent-but-unclaimed run frees its place: the next one may start.
    run_queue.dispatch_quietly(session=session)
    session.refresh(run)
    return run


def resume_paused(
    *, session: Session, ctx: WorkspaceContext, run_id: int, status_word: str | None = None
) -> Run:
    """Resume a paused run (only a paused one: OpenAI's resume); `status_word` names its state
    in the refusal the way the caller shows it."""
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    if not run.paused:
        raise InvalidTransition(
            f"fine-tuning job ftjob-{run.id} is {status_word or run.status}; only a paused job "
            "can be resumed"
        )
    if run.status != RunStatus.cancelled:
        raise InvalidTransition(
            f"fine-tuning job ftjob-{run.id} is still stopping after its pause; retry in a few "
            "seconds"
        )
    return resume(session=session, ctx=ctx, run_id=run.id)


def stop_and_keep(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """End a running run early but keep it: the worker saves a checkpoint and the final model,
    the run finishes as succeeded and is registered like any other (cancel discards instead)."""
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    if run.status != RunStatus.running or run.cancel_requested:
        raise InvalidTransition(
            f"run {run.id} is {run.status}; only a running run can be stopped and kept "
            "(cancel a queued one)"
        )
    if not run.stop_requested:
        run.stop_requested = True
        session.add(RunEvent(run_id=run.id, message=f"stop and keep requested by {ctx.user.email}"))
    session.flush()
    return run


RESUMABLE = (RunStatus.interrupted, RunStatus.failed, RunStatus.cancelled)


def is_stopped(run: Run) -> bool:
    """Stopped and kept before its last step: it finished `succeeded` (its model is
    registered) but did not train to the end, so it shows as stopped and can resume."""
    return (
        run.status == RunStatus.succeeded
        and bool(run.stop_requested)
        and bool(run.total_steps)
        and run.step < (run.total_steps or 0)
    )


def pause_state(run: Run) -> str | None:
    """A paused run's state: "paused" once it has stopped (its status is then `cancelled`),
    "pausing" while its worker is still stopping it; None for any other run, and for one
    that succeeded or failed before its worker saw the pause (that end is what it is)."""
    if not run.paused:
        return None
    status = RunStatus(run.status)
    if status == RunStatus.cancelled:
        return PAUSED
    return None if status.is_terminal else PAUSING


def can_resume(run: Run) -> bool:
    return RunStatus(run.status) in RESUMABLE or is_stopped(run)


def resume(*, session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    """Queue an interrupted, failed, cancelled or stopped run again; it continues from its
    last checkpoint (from the start if it has none).

    A person asking gives it a fresh budget of automatic restarts. If the broker refuses,
    the run is put back as it was.
    """
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    before = RunStatus(run.status)
    if not can_resume(run):
        raise InvalidTransition(
            f"run {run.id} is {before}; only an interrupted, failed, cancelled or stopped run "
            "can be resumed"
        )
    saved = (
        run.error, run.error_detail, run.finished_at, run.attempts, run.stop_requested,
        run.cancel_requested, run.paused,
    )  # fmt: skip
    lifecycle.transition(run, RunStatus.queued)
    run.error = None
    run.error_detail = None
    run.finished_at = None
    run.attempts = 0
    run.stop_requested = False
    run.cancel_requested = False
    run.paused = False
    # Back in the queue like a new launch: the dispatcher sends it when a slot is free.
    run.dispatched_at = None
    session.add(RunEvent(run_id=run.id, message=f"resume requested by {ctx.user.email}; queued"))
    resumed = audit.record(
        session=session,
        actor=ctx,
        action="run.resume",
        target_type="run",
        target_id=run.id,
        detail={"status_before": str(before)},
    )
    session.commit()
    try:
        run_queue.dispatch(session=session, started_now=run.id)
    except Exception:  # the broker refused: as it was, and no audit row of a resume
        session.refresh(run)
        session.delete(resumed)
        run.status = before  # an undo, not a move: the resume never happened
        (
            run.error, run.error_detail, run.finished_at, run.attempts, run.stop_requested,
            run.cancel_requested, run.paused,
        ) = saved  # fmt: skip
        session.commit()
        raise
    session.refresh(run)
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
    # In (step, name) order, the unique index's own: ordering by id made SQLite walk the
    # (run_id, id) index through every point of a long run to skip the sort.
    return [
        MetricRow(*row)
        for row in session.execute(query.order_by(MetricPoint.step, MetricPoint.name))
    ]


def group_by_step(rows: list[MetricRow]) -> list[dict[str, float | int]]:
    points: dict[int, dict[str, float | int]] = {}
    for row in rows:
        points.setdefault(row.step, {"step": row.step})[row.name] = row.value
    return [points[step] for step in sorted(points)]


def latest_metrics(*, session: Session, run_id: int) -> dict[str, float]:
    """Each metric's newest value, in a few index lookups per metric name.

    A skip-scan over the (run_id, name, id) index: the recursive query walks from one name to
    the next (`min(name) > previous`) and takes each name's newest point, so a run of 100k
    points costs what a run of 100 does. Grouping all the run's points by name read every one.
    """
    point = MetricPoint
    names = (
        select(func.min(point.name).label("name"))
        .where(point.run_id == run_id)
        .cte("metric_names", recursive=True)
    )
    following = (
        select(func.min(point.name))
        .where(point.run_id == run_id, point.name > names.c.name)
        .scalar_subquery()
    )
    names = names.union_all(select(following).where(names.c.name.is_not(None)))
    newest_value = (
        select(point.value)
        .where(point.run_id == run_id, point.name == names.c.name)
        .order_by(point.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = session.execute(select(names.c.name, newest_value).where(names.c.name.is_not(None)))
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


def final_evaluation(checkpoints: list[Checkpoint]) -> dict[str, Any] | None:
    """The final checkpoint's full evaluation (a classification report with its confusion
    matrix, or generation scores), as the worker stored it; None before there is one."""
    for checkpoint in reversed(checkpoints):
        evaluation = (checkpoint.metrics or {}).get("evaluation")
        if checkpoint.is_final and isinstance(evaluation, dict):
            return evaluation
    return None


def newest_metric(*, session: Session, run_id: int, name: str) -> float | None:
    """The newest value of one metric of a run (one index lookup), or None if it has none."""
    return session.scalar(
        select(MetricPoint.value)
        .where(MetricPoint.run_id == run_id, MetricPoint.name == name)
        .order_by(MetricPoint.id.desc())
        .limit(1)
    )


# Training steps whose timestamps measure the pace (the newest ones: the pace now).
PACE_WINDOW = 50


def estimated_finish(*, session: Session, run: Run) -> datetime | None:
    """When a running run should reach its last step, from its measured pace; else None.

    The pace is the time between recorded training steps (the newest PACE_WINDOW of them),
    not the time since the run started: that also holds the model's load and the data's
    tokenization, which made a first estimate minutes off. Before two steps are recorded
    there is no pace, and no estimate rather than a guess.
    """
    if run.status != RunStatus.running or not run.total_steps or run.cancel_requested:
        return None
    rows = session.execute(
        select(MetricPoint.step, MetricPoint.created_at)
        .where(MetricPoint.run_id == run.id, MetricPoint.name == "train_loss")
        .order_by(MetricPoint.step.desc())
        .limit(PACE_WINDOW)
    ).all()
    if len(rows) < 2:
        return None
    (last_step, last_at), (first_step, first_at) = rows[0], rows[-1]
    if last_step <= first_step or last_at < first_at:
        return None
    per_step = (last_at - first_at) / (last_step - first_step)
    return last_at + per_step * max(0, run.total_steps - last_step)


def progress(run: Run) -> dict[str, float | int | str | None]:
    """Status, step and an ETA from the pace so far (what the run page's progress bar shows).

    `state` is what a person should read: the status, except "stopped" for a run stopped and
    kept before its end, "worker lost" for a running run whose worker went silent (the
    sweeper re-queues it only after settings.run_stale_after_s; the page says so at once),
    and "paused" / "pausing" for a paused run (it ends `cancelled` with `paused` set, but it
    is meant to be resumed, so it must not read as a final cancel).
    `percent` is the real share of steps done (100 only for a run that trained to its end).
    """
    status = RunStatus(run.status)
    state = str(status)
    eta_s: float | None = None
    if paused := pause_state(run):
        state = paused
    elif status == RunStatus.running and worker_lost(run):
        state = WORKER_LOST
    elif status == RunStatus.running and run.started_at and run.total_steps and run.step > 0:
        elapsed = (utcnow() - run.started_at).total_seconds()
        eta_s = max(0.0, elapsed / run.step * (run.total_steps - run.step))
    if is_stopped(run):
        state = STOPPED
    if status == RunStatus.succeeded and state != STOPPED:
        percent = 100
    elif run.total_steps and run.step:
        percent = max(0, min(100, round(100 * run.step / run.total_steps)))
    else:
        percent = 0
    return {
        "status": run.status,
        "state": state,
        "step": run.step,
        "total_steps": run.total_steps,
        "percent": percent,
        "eta_s": eta_s,
        "error": run.error,
        "label": LABELS.get(state, state),
        "note": NOTES.get(state),
    }


STOPPED = "stopped"
WORKER_LOST = "worker-lost"
PAUSED = "paused"
PAUSING = "pausing"
LABELS = {WORKER_LOST: "worker lost, resuming"}
NOTES = {
    STOPPED: "Stopped and kept before its last step; its model is registered. Resume continues "
    "from the last checkpoint.",
    PAUSED: "Paused: Resume continues from where it stopped (its last checkpoint); Cancel "
    "makes the stop final.",
    PAUSING: "Pausing: the worker stops at the end of its step and saves a checkpoint; it can "
    "be resumed once it has stopped.",
    WORKER_LOST: "The worker stopped answering: the run resumes from its last checkpoint on a "
    "worker as soon as it is found orphaned.",
}
# A worker writes a heartbeat every second; this much silence means it is gone (well before
# the sweeper's settings.run_stale_after_s, which must rule out a slow but live one).
LOST_AFTER_S = 15.0


def worker_lost(run: Run) -> bool:
    from app.core.settings import get_settings

    if run.status != RunStatus.running or run.heartbeat_at is None:
        return False
    limit = min(LOST_AFTER_S, get_settings().run_stale_after_s / 2)
    return (utcnow() - run.heartbeat_at).total_seconds() > limit
