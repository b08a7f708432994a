"""The run queue: priorities, reordering, fair share across workspaces, quotas, dispatch.

Runs are not sent to Celery when they are created. They wait in the database (status
`queued`, `dispatched_at` empty) and `dispatch` sends the next one whenever fewer than
`settings.max_concurrent_runs` are active. It is called after every launch, cancel and finish
(`scheduler.on_run_finished`) and every few seconds by each worker's sweeper thread
(`scheduler.tick`); a lock row (`run_dispatch_lock`,
`SELECT ... FOR UPDATE` on Postgres, SQLite's single writer) makes concurrent dispatchers take
turns, so the limit holds with many web processes and workers. See docs/queue.md.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.errors import InvalidTransition, TooManyRequests, ValidationFailed
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import Role, Run, RunDispatchLock, RunEvent, RunStatus, Workspace
from app.db.session import rows_changed
from app.services.runs.access import get_for_editor
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext

log = logging.getLogger(__name__)

PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES: dict[int, str] = {v: k for k, v in PRIORITIES.items()}


def priority_name(value: int) -> str:
    return PRIORITY_NAMES.get(value, str(value))


class QuotaExceeded(TooManyRequests):
    """A workspace quota refuses the request; the message names the quota and the usage."""

    code = "quota_exceeded"


def _waiting_clause() -> Any:
    return (
        (Run.status == RunStatus.queued)
        & Run.dispatched_at.is_(None)
        & Run.cancel_requested.is_(False)
    )


def _active_clause() -> Any:
    """Runs holding a slot: training, being resumed, or sent and not yet claimed."""
    return or_(
        Run.status.in_([RunStatus.running, RunStatus.interrupted]),
        (Run.status == RunStatus.queued) & Run.dispatched_at.is_not(None),
    )


def _queue_order() -> tuple[Any, ...]:
    return (Run.priority.desc(), func.coalesce(Run.queue_rank, Run.id), Run.id)


def run_slots(config: dict[str, Any] | None) -> int:
    """GPU worker slots a run holds: one per node (a multi-node run is gang-scheduled)."""
    nodes = (config or {}).get("nodes")
    return nodes if isinstance(nodes, int) and nodes > 1 else 1


def check_fleet_fits(*, nodes: int) -> None:
    """A run on more nodes than the fleet has slots would wait for ever: refused at launch."""
    slots = get_settings().max_concurrent_runs
    if nodes > slots:
        raise ValidationFailed(
            f"nodes={nodes} is more than the fleet's {slots} GPU worker slot(s) "
            "(LLMIDE_MAX_CONCURRENT_RUNS); the run could never start",
            param="nodes",
        )


def active_by_workspace(*, session: Session) -> dict[int, int]:
    rows = session.execute(
        select(Run.workspace_id, func.count()).where(_active_clause()).group_by(Run.workspace_id)
    )
    return {ws: n for ws, n in rows}


def _take_lock(session: Session) -> None:
    """Hold the dispatcher lock until this transaction ends (commit or rollback)."""
    taken = rows_changed(
        session, update(RunDispatchLock).where(RunDispatchLock.id == 1).values(taken_at=utcnow())
    )
    if taken == 0:  # a database created without the migration's row
        session.add(RunDispatchLock(id=1, taken_at=utcnow()))
        session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(RunDispatchLock.id).where(RunDispatchLock.id == 1).with_for_update())


def _pick(session: Session) -> Run | None:
    """The next run to send, or None when the fleet is full or nothing may start.

    Fair share: among workspaces with a waiting run (and room under their own concurrency
    quota), the one with the fewest active runs goes first; ties go to the higher priority of
    their next run, then to the older run. Within a workspace: priority, then queue order.
    """
    settings = get_settings()
    # Active runs per workspace (fair share, quotas) and the slots they hold (a multi-node
    # run holds one per node), from one read of the few active rows.
    active: dict[int, int] = {}
    used = 0
    for workspace_id, config in session.execute(
        select(Run.workspace_id, Run.config).where(_active_clause())
    ):
        active[workspace_id] = active.get(workspace_id, 0) + 1
        used += run_slots(config)
    if used >= settings.max_concurrent_runs:
        return None
    quotas: dict[int, float] = {
        ws: float(quota)
        for ws, quota in session.execute(
            select(Workspace.id, Workspace.quota_concurrent_runs).where(
                Workspace.quota_concurrent_runs.is_not(None)
            )
        )
        if quota is not None
    }
    # Each workspace's head of queue: the first waiting run in its own order.
    ranked = (
        select(
            Run.id,
            Run.workspace_id,
            Run.priority,
            func.row_number()
            .over(partition_by=Run.workspace_id, order_by=_queue_order())
            .label("position"),
        )
        .where(_waiting_clause())
        .subquery()
    )
    heads = session.execute(
        select(ranked.c.id, ranked.c.workspace_id, ranked.c.priority).where(ranked.c.position == 1)
    ).all()
    eligible = [
        head
        for head in heads
        if active.get(head.workspace_id, 0) < quotas.get(head.workspace_id, float("inf"))
    ]
    if not eligible:
        return None
    best = min(eligible, key=lambda h: (active.get(h.workspace_id, 0), -h.priority, h.id))
    run = session.get(Run, best.id)
    if run is not None and used + run_slots(run.config) > settings.max_concurrent_runs:
        # Gang scheduling: all of its nodes start together or it waits, and nothing smaller
        # overtakes it meanwhile (else a big run could wait for ever behind small ones).
        return None
    return run


def dispatch_one(*, session: Session, started_now: int | None = None) -> int | None:
    """Send the next run, if any may start; returns its id.

    The run is marked and the task sent inside the locked transaction, then committed: if the
    broker refuses, the rollback leaves the run waiting (and the error goes to the caller); if
    the commit were lost after a send, the worker's claim still trains the run exactly once.
    """
    session.commit()  # end any read transaction: the lock must be this transaction's first act
    try:
        _take_lock(session)
        run = _pick(session)
        if run is None:
            session.commit()
            return None
        run.dispatched_at = utcnow()
        session.flush()
        run.task_id = task_queue.enqueue_training(run.id)
        if run.id != started_now:  # a run sent as it is launched needs no second line
            waited = (run.dispatched_at - run.created_at).total_seconds()
            session.add(
                RunEvent(run_id=run.id, message=f"left the queue after {waited:.0f} s of waiting")
            )
        session.commit()
        return run.id
    except BaseException:
        session.rollback()
        raise


def dispatch(*, session: Session, limit: int = 1_000, started_now: int | None = None) -> list[int]:
    """Send runs until the fleet is full or none waits; returns the ids sent, in order.
    `started_now`: the run being launched by this request (its log already says queued)."""
    sent: list[int] = []
    while len(sent) < limit:
        run_id = dispatch_one(session=session, started_now=started_now)
        if run_id is None:
            break
        sent.append(run_id)
    return sent


def dispatch_quietly(*, session: Session) -> list[int]:
    """`dispatch` for callers that must not fail because of it (a finishing worker, the
    sweeper, a cancel): a broker or database hiccup is logged and the next round retries."""
    try:
        return dispatch(session=session)
    except Exception:
        log.exception("dispatching queued runs failed; the sweeper will try again")
        session.rollback()
        return []


def record_worker_host(*, session: Session, run_id: int) -> None:
    """Note which machine trains the run (the queue page groups running runs by it)."""
    session.execute(
        update(Run).where(Run.id == run_id).values(worker_host=socket.gethostname()[:255])
    )
    session.commit()


# --- what a person does to the queue ----------------------------------------------------------


def parse_priority(value: str) -> int:
    if value not in PRIORITIES:
        raise ValidationFailed(
            f"priority must be one of {', '.join(PRIORITIES)}; got {value!r}", param="priority"
        )
    return PRIORITIES[value]


def waiting_runs(*, session: Session, workspace_id: int) -> list[Run]:
    """The workspace's waiting runs in queue order (position 1 first)."""
    return list(
        session.scalars(
            select(Run)
            .where(Run.workspace_id == workspace_id, _waiting_clause())
            .order_by(*_queue_order())
        )
    )


def _waiting_run(session: Session, ctx: WorkspaceContext, run_id: int) -> Run:
    run = get_for_editor(session=session, ctx=ctx, run_id=run_id)
    if run.status != RunStatus.queued or run.dispatched_at is not None or run.cancel_requested:
        raise InvalidTransition(
            f"run {run.id} is {run.status}"
            + (" and already sent to a worker" if run.status == RunStatus.queued else "")
            + "; only waiting runs can be reordered"
        )
    return run


def set_priority(*, session: Session, ctx: WorkspaceContext, run_id: int, priority: str) -> Run:
    value = parse_priority(priority)
    run = _waiting_run(session, ctx, run_id)
    before = run.priority
    run.priority = value
    session.add(
        RunEvent(
            run_id=run.id,
            message=f"priority {priority_name(before)} -> {priority} by {ctx.user.email}",
        )
    )
    audit.record(
        session=session,
        actor=ctx,
        action="run.reorder",
        target_type="run",
        target_id=run.id,
        detail={"priority_before": priority_name(before), "priority": priority},
    )
    session.commit()
    return run


def move(*, session: Session, ctx: WorkspaceContext, run_id: int, direction: str) -> Run:
    """Swap a waiting run with its neighbour in the workspace's queue (taking the neighbour's
    priority when it passes a run of another priority), so the queue shows it one place
    up or down. The workspace's waiting runs are renumbered in their new order."""
    if direction not in ("up", "down"):
        raise ValidationFailed("direction must be up or down", param="direction")
    run = _waiting_run(session, ctx, run_id)
    order = waiting_runs(session=session, workspace_id=ctx.workspace.id)
    i = next(k for k, r in enumerate(order) if r.id == run.id)
    j = i - 1 if direction == "up" else i + 1
    if not 0 <= j < len(order):
        return run  # already first (or last): nothing to do, like an arrow at a list's end
    before = run.priority
    run.priority = order[j].priority
    order[i], order[j] = order[j], order[i]
    for rank, waiting in enumerate(order):
        waiting.queue_rank = rank
    session.add(RunEvent(run_id=run.id, message=f"moved {direction} by {ctx.user.email}"))
    audit.record(
        session=session,
        actor=ctx,
        action="run.reorder",
        target_type="run",
        target_id=run.id,
        detail={
            "direction": direction,
            "position": j + 1,
            "priority_before": priority_name(before),
            "priority": priority_name(run.priority),
        },
    )
    session.commit()
    return run


# --- quotas -------------------------------------------------------------------------------------


def month_start(now: datetime | None = None) -> datetime:
    now = now or utcnow()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def gpu_hours_this_month(*, session: Session, workspace_id: int) -> float:
    """GPU-hours the workspace's runs used since the 1st of this month (UTC): one GPU per run,
    from start to finish (or now, for a run still going), the part inside this month."""
    start = month_start()
    now = utcnow()
    rows = session.execute(
        select(Run.started_at, Run.finished_at).where(
            Run.workspace_id == workspace_id,
            Run.started_at.is_not(None),
            or_(Run.finished_at.is_(None), Run.finished_at >= start),
        )
    )
    seconds = 0.0
    for started, finished in rows:
        if started is None:  # the query excludes them; the type does not know
            continue
        end = finished or now
        seconds += max(0.0, (end - max(started, start)).total_seconds())
    return seconds / 3600.0


def check_launch_quota(*, session: Session, workspace: Workspace) -> None:
    """Refuse a launch once the workspace used its GPU-hours of the month (429)."""
    quota = workspace.quota_gpu_hours_per_month
    if quota is None:
        return
    used = gpu_hours_this_month(session=session, workspace_id=workspace.id)
    if used >= quota:
        next_month = (month_start() + timedelta(days=32)).replace(day=1)
        raise QuotaExceeded(
            f"workspace '{workspace.name}' has used {used:.2f} of its {quota:g} GPU-hours this "
            f"month (quota gpu_hours_per_month); new runs can start from "
            f"{next_month:%Y-%m-%d}, or an owner can raise the quota"
        )


@dataclass
class Quotas:
    concurrent_runs: int | None
    gpu_hours_per_month: float | None
    active_runs: int
    gpu_hours_used: float


def quotas(*, session: Session, ctx: WorkspaceContext) -> Quotas:
    workspace = ctx.workspace
    return Quotas(
        concurrent_runs=workspace.quota_concurrent_runs,
        gpu_hours_per_month=workspace.quota_gpu_hours_per_month,
        active_runs=active_by_workspace(session=session).get(workspace.id, 0),
        gpu_hours_used=gpu_hours_this_month(session=session, workspace_id=workspace.id),
    )


def set_quotas(
    *,
    session: Session,
    ctx: WorkspaceContext,
    concurrent_runs: int | None,
    gpu_hours_per_month: float | None,
) -> Quotas:
    """Owners (and administrators) set or clear (None) the workspace's quotas."""
    if not ctx.user.is_admin:
        ctx.require(Role.owner)
    workspace = ctx.workspace
    before = {
        "concurrent_runs": workspace.quota_concurrent_runs,
        "gpu_hours_per_month": workspace.quota_gpu_hours_per_month,
    }
    workspace.quota_concurrent_runs = concurrent_runs
    workspace.quota_gpu_hours_per_month = gpu_hours_per_month
    audit.record(
        session=session,
        actor=ctx,
        action="workspace.quota",
        target_type="workspace",
        target_id=workspace.id,
        detail={
            "before": str(before),
            "concurrent_runs": concurrent_runs,
            "gpu_hours_per_month": gpu_hours_per_month,
        },
    )
    session.commit()
    # A raised concurrency quota may let a waiting run start now.
    dispatch_quietly(session=session)
    return quotas(session=session, ctx=ctx)


# --- the queue as a page shows it -----------------------------------------------------------


@dataclass
class QueueView:
    waiting: list[Run]
    active: list[Run]
    # Per worker machine: (this workspace's runs on it, how many other workspaces' runs).
    machines: dict[str, tuple[list[Run], int]] = field(default_factory=dict)
    slots: int = 1
    fleet_active: int = 0
    quotas: Quotas | None = None
    waiting_reason: str | None = None
    device: str = "CPU"  # what the slots train on, in the page's words


def training_device() -> str:
    """ "GPU" when workers are given GPUs (LLMIDE_WORKER_GPUS) or this machine has an NVIDIA
    device, else "CPU": the queue page names what its slots and hours are of. (The web never
    imports torch; a remote GPU fleet sets LLMIDE_WORKER_GPUS on its workers and here.)"""
    if get_settings().worker_gpus.strip() or Path("/dev/nvidia0").exists():
        return "GPU"
    return "CPU"


def queue_view(*, session: Session, ctx: WorkspaceContext) -> QueueView:
    settings = get_settings()
    ws = ctx.workspace.id
    waiting = waiting_runs(session=session, workspace_id=ws)
    active_all = list(
        session.scalars(select(Run).where(_active_clause()).order_by(Run.started_at, Run.id))
    )
    mine = [r for r in active_all if r.workspace_id == ws]
    machines: dict[str, tuple[list[Run], int]] = {}
    for run in active_all:
        if run.status != RunStatus.running:
            continue
        host = run.worker_host or "unknown worker"
        runs_here, others = machines.get(host, ([], 0))
        if run.workspace_id == ws:
            runs_here.append(run)
        else:
            others += 1
        machines[host] = (runs_here, others)
    view = QueueView(
        waiting=waiting,
        active=mine,
        machines=machines,
        slots=settings.max_concurrent_runs,
        fleet_active=sum(run_slots(run.config) for run in active_all),  # a node is a slot
        quotas=quotas(session=session, ctx=ctx),
        device=training_device(),
    )
    if waiting:
        quota = ctx.workspace.quota_concurrent_runs
        if quota is not None and len(mine) >= quota:
            view.waiting_reason = f"this workspace's quota of {quota} concurrent run(s) is in use"
        elif view.fleet_active >= view.slots:
            view.waiting_reason = f"all {view.slots} {view.device} slot(s) of the fleet are busy"
        elif view.fleet_active + run_slots(waiting[0].config) > view.slots:
            view.waiting_reason = (
                f"the next run needs {run_slots(waiting[0].config)} nodes at once and "
                f"{view.slots - view.fleet_active} of {view.slots} slot(s) are free"
            )
    return view


def running_for(run: Run) -> float | None:
    """Seconds a running run has been going (the queue page's "for how long")."""
    if run.started_at is None or run.status != RunStatus.running:
        return None
    return max(0.0, (utcnow() - run.started_at).total_seconds())
