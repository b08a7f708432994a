"""The run queue: what waits and what runs, reordering waiting runs, workspace quotas."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import SessionDep, Workspace
from app.api.schemas.queue import (
    QueuedRunRead,
    QueueRead,
    QuotasRead,
    QuotasUpdate,
    RunMove,
    RunPriorityUpdate,
    WorkerMachineRead,
)
from app.api.schemas.runs import RunRead
from app.db.models import Run
from app.services.runs import queue as run_queue

router = APIRouter(prefix="/api/v1", tags=["queue"])


@router.get("/queue", response_model=QueueRead)
def read_queue(session: SessionDep, ctx: Workspace) -> QueueRead:
    """This workspace's waiting runs (in order) and active runs, and the fleet's occupancy."""
    view = run_queue.queue_view(session=session, ctx=ctx)

    def item(run: Run, position: int | None = None) -> QueuedRunRead:
        read = QueuedRunRead.model_validate(run, from_attributes=True)
        read.position = position
        read.running_for_s = run_queue.running_for(run)
        return read

    assert view.quotas is not None
    return QueueRead(
        waiting=[item(run, k + 1) for k, run in enumerate(view.waiting)],
        active=[item(run) for run in view.active],
        machines=[
            WorkerMachineRead(
                host=host, runs=[item(r) for r in runs_here], other_workspaces_runs=others
            )
            for host, (runs_here, others) in sorted(view.machines.items())
        ],
        slots=view.slots,
        fleet_active=view.fleet_active,
        waiting_reason=view.waiting_reason,
        quotas=QuotasRead(**asdict(view.quotas)),
    )


@router.post("/runs/{run_id}/priority", response_model=RunRead)
def set_run_priority(
    run_id: int, body: RunPriorityUpdate, session: SessionDep, ctx: Workspace
) -> RunRead:
    run = run_queue.set_priority(session=session, ctx=ctx, run_id=run_id, priority=body.priority)
    return RunRead.model_validate(run)


@router.post("/runs/{run_id}/move", response_model=RunRead)
def move_run(run_id: int, body: RunMove, session: SessionDep, ctx: Workspace) -> RunRead:
    run = run_queue.move(session=session, ctx=ctx, run_id=run_id, direction=body.direction)
    return RunRead.model_validate(run)


@router.get("/quotas", response_model=QuotasRead)
def read_quotas(session: SessionDep, ctx: Workspace) -> QuotasRead:
    return QuotasRead(**asdict(run_queue.quotas(session=session, ctx=ctx)))


@router.put("/quotas", response_model=QuotasRead)
def update_quotas(body: QuotasUpdate, session: SessionDep, ctx: Workspace) -> QuotasRead:
    """Owners (or administrators) set the workspace's quotas; null clears one."""
    result = run_queue.set_quotas(
        session=session,
        ctx=ctx,
        concurrent_runs=body.concurrent_runs,
        gpu_hours_per_month=body.gpu_hours_per_month,
    )
    return QuotasRead(**asdict(result))
