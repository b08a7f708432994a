"""What a worker does to a run's records: claim it, report progress, checkpoints and the outcome.

Called by the Celery task (workers/tasks.py); every function takes its own short session so a
long training job never holds a transaction open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import Checkpoint, MetricPoint, Run, RunEvent, RunStatus
from app.db.session import rows_changed, upsert_insert
from app.domain import lifecycle
from app.services import artifacts, chart_history, scheduler
from app.services.registry import registration

# Workers write a heartbeat at least this often, even during evaluation or checkpoint saving;
# a run silent for settings.run_stale_after_s is taken to be orphaned.
HEARTBEAT_EVERY_S = 1.0


def _stale_before() -> datetime:
    return utcnow() - timedelta(seconds=get_settings().run_stale_after_s)


def claim(*, session: Session, run_id: int, task_id: str | None) -> Run | None:
    """Atomically move a run to `running`; None when another worker has it or it was cancelled.

    One UPDATE decides, so two workers handed the same run (a redelivered message and a
    recovery re-enqueue, say) cannot both train it: a live run's fresh heartbeat keeps it.
    """
    now = utcnow()
    claimed = rows_changed(
        session,
        update(Run)
        .where(
            Run.id == run_id,
            Run.cancel_requested.is_(False),
            Run.status.in_(lifecycle.sources(RunStatus.running)),
            # running → running is a takeover: only of a run whose worker went silent.
            or_(Run.status != RunStatus.running, Run.heartbeat_at < _stale_before()),
        )
        .values(
            status=RunStatus.running,
            started_at=func.coalesce(Run.started_at, now),
            heartbeat_at=now,
            attempts=Run.attempts + 1,
            task_id=task_id,
        ),
    )
    session.commit()
    if claimed != 1:
        return None
    run = session.get(Run, run_id)
    if run is not None:
        session.refresh(run)
    return run


def _move(
    session: Session, run_id: int, source: RunStatus, target: RunStatus, **values: Any
) -> bool:
    """One guarded UPDATE `source` → `target` (a move the lifecycle table must hold); False
    when the run was no longer `source` (another worker's sweeper got there first)."""
    lifecycle.check(source, target, what=f"run {run_id}")
    statement = update(Run).where(Run.id == run_id, Run.status == source)
    return rows_changed(session, statement.values(status=target, **values)) == 1


def _hand_back(session: Session, run_id: int, *, event: str, **values: Any) -> bool:
    """Move a running run back to interrupted, for the next worker to resume it from its last
    checkpoint, and say why in a warning event; False (and no event) when it was no longer
    running: another worker's sweeper, or a cancel, got there first."""
    handed_back = _move(session, run_id, RunStatus.running, RunStatus.interrupted, **values)
    if handed_back:
        add_event(session=session, run_id=run_id, level="warning", message=event)
    return handed_back


def heartbeat(*, session: Session, run_id: int) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))


def interrupt_orphaned_runs(*, session: Session) -> list[int]:
    """Mark running runs whose worker went silent as interrupted; returns the ids to re-queue.

    Called by every worker's sweeper: after a crash (kill -9, OOM, a lost machine) the run is
    resumed from its last checkpoint instead of staying "running" for ever. A run that has
    already used its automatic restarts (settings.run_max_restarts) is marked failed instead,
    so a run that crashes its worker every time (out of memory, say) cannot loop.
    """
    max_restarts = get_settings().run_max_restarts
    orphaned = list(
        session.execute(
            select(Run.id, Run.attempts, Run.step).where(
                Run.status == RunStatus.running,
                or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < _stale_before()),
            )
        )
    )
    requeue: list[int] = []
    for run_id, attempts, step in orphaned:
        # attempts counts claims: the first start plus each restart so far.
        if attempts > max_restarts:
            error = (
                f"the worker running this run died {attempts} times (last at step {step}); "
                f"automatic restarts are capped at {max_restarts}. If it ran out of memory, "
                "try a smaller batch size or gradient accumulation; Resume tries again from "
                "the last checkpoint."
            )
            if _move(
                session,
                run_id,
                RunStatus.running,
                RunStatus.failed,
                error=error,
                finished_at=utcnow(),
            ):
                add_event(
                    session=session, run_id=run_id, level="error", message=f"run failed: {error}"
                )
            continue
        if _hand_back(
            session,
            run_id,
            event="the worker running this run stopped answering; it will resume from its "
            f"last checkpoint (restart {attempts} of {max_restarts})",
        ):
            requeue.append(run_id)  # else another worker's sweeper got there first
    session.commit()
    return requeue


def interrupt_for_shutdown(*, session: Session, run_id: int, step: int) -> bool:
    """A worker shutting down (SIGTERM) saved a checkpoint and hands the run back.

    A planned restart is not a crash: it does not use up one of the automatic restarts.
    True when the run should be re-queued (it was still this worker's and not cancelled).
    """
    handed_back = _hand_back(
        session,
        run_id,
        event=f"the worker is shutting down: checkpoint saved at step {step}; the run "
        "will resume on the next worker",
        attempts=Run.attempts - 1,  # a claimed run has attempts >= 1
        step=step,
    )
    session.commit()
    return handed_back


def gang_incomplete(*, session: Session, run_id: int, nodes: int, waited_s: float) -> bool:
    """Not every node of a multi-node run joined its rendezvous in time, so none trained (all
    or none). The run goes back to the queue while automatic restarts are left, else it fails
    saying why. True when it should be re-sent."""
    run = session.get(Run, run_id)
    if run is None:
        return False
    max_restarts = get_settings().run_max_restarts
    return _retry_or_fail(  # the caller's session scope commits, then re-sends the task
        session,
        run,
        max_restarts,
        error=f"the run needs {nodes} nodes, and {run.attempts} times they did not all "
        f"start within {waited_s:.0f} s; give it fewer nodes or free more GPU workers",
        event=f"not all {nodes} nodes started within {waited_s:.0f} s, so none trained; "
        f"the run goes back to the queue (attempt {run.attempts} of {max_restarts + 1})",
    )


def holds_attempt(*, session: Session, run_id: int, attempt: int) -> bool:
    """Whether the run is still running as this attempt: a multi-node attempt whose nodes hung
    on a lost peer may end long after the run went stale and was resumed as a newer one, and
    must then touch nothing."""
    run = session.get(Run, run_id)
    return run is not None and run.status == RunStatus.running and run.attempts == attempt


def node_lost(*, session: Session, run_id: int, nodes: int, error: str) -> bool:
    """A node of a multi-node run died or dropped out mid-training (its peers' collectives
    failed): like a crashed worker, the run resumes from its last checkpoint on the nodes that
    are free, while automatic restarts are left; then it fails with the last error. True when
    it should be re-sent."""
    run = session.get(Run, run_id)
    if run is None:
        return False
    max_restarts = get_settings().run_max_restarts
    first_line = error.strip().splitlines()[0][:300] if error.strip() else "no error report"
    return _retry_or_fail(  # the caller's session scope commits, then re-sends the task
        session,
        run,
        max_restarts,
        error=f"a node of this {nodes}-node run was lost {run.attempts} times; "
        f"automatic restarts are capped at {max_restarts}. Last: {first_line}",
        event=f"a node of this {nodes}-node run was lost ({first_line}); it will resume "
        f"from its last checkpoint (restart {run.attempts} of {max_restarts})",
    )


def _retry_or_fail(
    session: Session, run: Run, max_restarts: int, *, error: str, event: str
) -> bool:
    """A multi-node attempt that went wrong: while automatic restarts are left the run is
    handed back for another attempt (`event` says so), after that it ends failed with
    `error`. True when it was handed back and its task should be re-sent."""
    if run.attempts > max_restarts:
        finish(session=session, run_id=run.id, status=RunStatus.failed, error=error)
        return False
    return _hand_back(session, run.id, event=event)


OOM_SUGGESTION = (
    "The run ran out of memory: try a smaller batch size with gradient accumulation to keep "
    "the effective batch, a shorter sequence length, LoRA, or bf16."
)
TRACEBACK_LINES = 12


def describe_failure(exc: BaseException, traceback_text: str) -> tuple[str, str]:
    """(error, detail) for a failed run: the error a person reads first (with a suggestion
    when the cause is known) and the traceback's last lines for the run page.

    Out-of-memory is recognised by name and message (torch.OutOfMemoryError, "CUDA out of
    memory", MemoryError), so this needs no torch import.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    return describe_error(
        f"{type(exc).__name__}: {exc}",
        traceback_text,
        out_of_memory=bool(names & {"OutOfMemoryError", "MemoryError"}),
    )


def describe_error(
    error: str, traceback_text: str, *, out_of_memory: bool = False
) -> tuple[str, str]:
    """describe_failure for an error known only as its line ("ValueError: ..."), as a
    training process of a multi-device run reports it."""
    error = error.strip()
    name = error.partition(":")[0].rpartition(".")[2]
    if (
        out_of_memory
        or name in ("OutOfMemoryError", "MemoryError")
        or "out of memory" in error.lower()
    ):
        error = f"{error.splitlines()[0][:500]}\n{OOM_SUGGESTION}"
    lines = [line for line in traceback_text.rstrip().splitlines() if line.strip()]
    return error[:4000], "\n".join(lines[-TRACEBACK_LINES:])[:8000]


def add_event(*, session: Session, run_id: int, message: str, level: str = "info") -> None:
    session.add(RunEvent(run_id=run_id, level=level, message=message[:4000]))


def finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Drop NaN and infinities: JSON columns (Postgres) and JSON answers cannot carry them."""
    return {k: v for k, v in metrics.items() if not isinstance(v, float) or math.isfinite(v)}


MetricReport = tuple[int, str, float] | tuple[int, str, float, datetime]


def write_metrics(*, session: Session, run_id: int, points: Iterable[MetricReport]) -> None:
    """Insert points, ignoring ones already stored (a resumed run may report a step again).

    A point may carry the time it was reported (step, name, value, at): the worker writes in
    batches, and a point's time is when its step ended, not when its batch reached the
    database. Without one, it is stamped now.

    Non-finite values (a diverged loss, a grad norm the trainer did not compute) are left out:
    neither SQL nor JSON can carry NaN, and a chart gap says the same thing.
    """
    now = utcnow()
    values = [
        {
            "run_id": run_id,
            "step": point[0],
            "name": point[1],
            "value": float(point[2]),
            "created_at": point[3] if len(point) > 3 else now,
        }
        for point in points
        if math.isfinite(point[2])
    ]
    if not values:
        return
    stmt = (
        upsert_insert(session, MetricPoint)
        .values(values)
        .on_conflict_do_nothing(index_elements=["run_id", "step", "name"])
    )
    session.execute(stmt)


def update_progress(*, session: Session, run_id: int, step: int, total_steps: int | None) -> None:
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(step=step, total_steps=total_steps, heartbeat_at=utcnow())
    )


def cancel_requested(*, session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def stop_flags(*, session: Session, run_id: int) -> tuple[bool, bool]:
    """(cancel requested, stop-and-keep requested), read in one query by the reporter."""
    row = session.execute(
        select(Run.cancel_requested, Run.stop_requested).where(Run.id == run_id)
    ).one_or_none()
    return (bool(row[0]), bool(row[1])) if row is not None else (True, False)


def mark_checkpoints_deleted(*, session: Session, run_id: int, steps: Iterable[int]) -> None:
    """The retention policy removed these checkpoints' files: keep the rows as history, but
    nothing (resume, the registry) may offer them again."""
    steps = list(steps)
    if steps:
        session.execute(
            update(Checkpoint)
            .where(
                Checkpoint.run_id == run_id,
                Checkpoint.step.in_(steps),
                Checkpoint.is_final.is_(False),
                Checkpoint.deleted_at.is_(None),
            )
            .values(deleted_at=utcnow())
        )


def record_checkpoint(
    *,
    session: Session,
    run_id: int,
    step: int,
    storage_key: str,
    metrics: dict[str, Any],
    is_final: bool = False,
) -> Checkpoint:
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step)
    )
    if checkpoint is None:
        checkpoint = Checkpoint(run_id=run_id, step=step, storage_key=storage_key)
        session.add(checkpoint)
    checkpoint.storage_key = storage_key
    checkpoint.metrics = finite_metrics(metrics)
    checkpoint.is_final = is_final
    session.flush()
    return checkpoint


def apply_retention(
    *,
    session: Session,
    run_id: int,
    keep_last: int | None,
    best_metric: str | None = None,
    best_mode: str = "min",
) -> list[str]:
    """Keep the newest `keep_last` checkpoints and the best by `best_metric`; mark the rest
    deleted and return their storage keys for the worker to remove from disk.

    None keeps everything. The newest checkpoint always stays (a resume needs it); the final
    model is not a checkpoint here and is never touched.
    """
    if keep_last is None:
        return []
    live = list(
        session.scalars(
            select(Checkpoint)
            .where(
                Checkpoint.run_id == run_id,
                Checkpoint.is_final.is_(False),
                Checkpoint.deleted_at.is_(None),
            )
            .order_by(Checkpoint.step.desc())
        )
    )
    keep = {c.id for c in live[: max(1, keep_last)]}
    if best_metric:
        scored = [c for c in live if isinstance(c.metrics.get(best_metric), int | float)]
        if scored:
            pick = min if best_mode == "min" else max
            keep.add(pick(scored, key=lambda c: c.metrics[best_metric]).id)
    doomed = [c for c in live if c.id not in keep]
    for checkpoint in doomed:
        checkpoint.deleted_at = utcnow()
    session.flush()
    return [c.storage_key for c in doomed]


def latest_checkpoint(*, session: Session, run_id: int) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint)
        .where(
            Checkpoint.run_id == run_id,
            Checkpoint.is_final.is_(False),
            Checkpoint.deleted_at.is_(None),
        )
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )


# The file that makes a folder a resumable Trainer checkpoint (the engine's TRAINER_STATE_FILE).
TRAINER_STATE_FILE = "trainer_state.json"


def resume_point(*, session: Session, run_id: int) -> tuple[str, int] | None:
    """(storage key, step) of the trainer checkpoint a (re)started run continues from.

    The newest listed checkpoint, unless the run was stopped and kept (or cancelled) later:
    its last trainer checkpoint was saved at the final step, whose row the final model took
    over (one checkpoint row a step), so that folder is found beside the others.
    """
    latest = latest_checkpoint(session=session, run_id=run_id)
    final = session.scalar(
        select(Checkpoint)
        .where(
            Checkpoint.run_id == run_id,
            Checkpoint.is_final.is_(True),
            Checkpoint.deleted_at.is_(None),
        )
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    if final is not None and (latest is None or final.step > latest.step):
        key = f"{artifacts.run_dir_key(run_id)}/checkpoints/checkpoint-{final.step}"
        try:  # here, or in the shared store when the run trained on another host
            artifacts.read_member(key, TRAINER_STATE_FILE)
        except NotFound:
            pass
        else:
            return key, final.step
    return (latest.storage_key, latest.step) if latest is not None else None


def finish(
    *,
    session: Session,
    run_id: int,
    status: RunStatus,
    error: str | None = None,
    error_detail: str | None = None,
    final_checkpoint_key: str | None = None,
    final_step: int | None = None,
    final_metrics: dict[str, Any] | None = None,
) -> None:
    """Close a run; a succeeded or cancelled run with a final model gets it registered."""
    run = session.get(Run, run_id)
    if run is None:
        return
    lifecycle.transition(run, status)
    run.error = error
    run.error_detail = error_detail
    run.finished_at = utcnow()
    if final_checkpoint_key is not None and final_step is not None:
        checkpoint = record_checkpoint(
            session=session,
            run_id=run_id,
            step=final_step,
            storage_key=final_checkpoint_key,
            metrics=final_metrics or {},
            is_final=True,
        )
        if status == RunStatus.succeeded and run.sweep_id is not None:
            # A sweep registers only its best trial, once it ends (docs/sweeps.md): twenty
            # trials would otherwise be twenty versions, most of them worse.
            add_event(
                session=session,
                run_id=run_id,
                message="not registered: a sweep trial; the sweep registers its best trial's "
                "model when it ends",
            )
        elif status == RunStatus.succeeded and run.cross_validation_id is not None:
            # A fold's model is registered only if the user picks it (docs/evaluation.md).
            add_event(
                session=session,
                run_id=run_id,
                message=f"not registered: fold {run.cross_validation_fold} of cross-validation "
                f"{run.cross_validation_id}; register the fold (or a final fit) you choose",
            )
        elif status == RunStatus.succeeded:
            version = registration.register_checkpoint(
                session=session, run=run, checkpoint=checkpoint
            )
            add_event(
                session=session,
                run_id=run_id,
                message=f"registered as {version.serving_name} (version {version.version})",
            )
    # A paused run ends cancelled, but its log says what a person asked for.
    ended = "paused" if run.paused and status == RunStatus.cancelled else str(status)
    add_event(
        session=session,
        run_id=run_id,
        message=f"run {ended}" + (f": {error}" if error else ""),
        level="error" if status == RunStatus.failed else "info",
    )
    session.commit()
    scheduler.on_run_finished(session=session, run_id=run_id)  # next trial, next queued run
    if RunStatus(status).is_terminal:
        # A long run's first chart then finds its history thinned (a short run: nothing to do).
        chart_history.store_if_long(session=session, run=run)
