"""Every status a stored record can have, and the one table of moves between them.

The enums' values are the strings already stored in the database (no migration). Services
change a status only through `transition()` (an object in memory) or `sources()` (the
WHERE clause of a guarded UPDATE, for moves that must be atomic across processes: a worker's
claim, the sweeper's interrupt). A move the table does not hold raises `InvalidTransition`
(409), so a state machine bug is a clear refusal, not a run stuck in an impossible state.

This module imports nothing of the product but its errors: `app.db.models` takes its enums
from here, and the worker side reads the same table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, TypeVar

from app.core.errors import InvalidTransition


class RunStatus(enum.StrEnum):
    """A run's lifecycle; the names match OpenAI's fine-tuning job statuses where they overlap."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


class SweepStatus(enum.StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class DeploymentStatus(enum.StrEnum):
    loading = "loading"
    ready = "ready"
    failed = "failed"
    stopped = "stopped"


class DatasetVersionStatus(enum.StrEnum):
    ready = "ready"
    preparing = "preparing"
    failed = "failed"


class UploadStatus(enum.StrEnum):
    open = "open"
    completed = "completed"


class JobStatus(enum.StrEnum):
    """An export or evaluation job of a model version."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


S = TypeVar("S", bound=enum.StrEnum)

R = RunStatus
# Who moves a run, and from where (docs/run-lifecycle.md, "States"):
#   claim      queued | interrupted | running (stale heartbeat: its worker died) → running
#   cancel     queued | interrupted → cancelled (a running run is flagged; its worker ends it)
#   finish     running | interrupted → succeeded | failed | cancelled (the sweeper may have
#              marked a slow but live worker's run interrupted just before it finished)
#   interrupt  running → interrupted (the sweeper; a worker shutting down)
#   give up    running → failed (the sweeper, once the automatic restarts are used up)
#   resume     interrupted | failed | cancelled | succeeded → queued (succeeded: only a run
#              stopped and kept, which `runs.resume` checks; it continues from its checkpoint)
#   (queue)    dispatching marks `dispatched_at` and leaves the status `queued`.
RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    R.queued: frozenset({R.running, R.cancelled}),
    R.running: frozenset({R.running, R.interrupted, R.succeeded, R.failed, R.cancelled}),
    R.interrupted: frozenset({R.running, R.queued, R.succeeded, R.failed, R.cancelled}),
    R.failed: frozenset({R.queued}),
    R.cancelled: frozenset({R.queued}),
    R.succeeded: frozenset({R.queued}),
}

SW = SweepStatus
SWEEP_TRANSITIONS: Mapping[SweepStatus, frozenset[SweepStatus]] = {
    SW.running: frozenset({SW.succeeded, SW.failed, SW.cancelled}),
    SW.succeeded: frozenset(),
    SW.failed: frozenset(),
    SW.cancelled: frozenset(),
}

D = DeploymentStatus
# Who moves a deployment (app/services/serving/: deployments.py, reconcile.py):
#   deploy     a live row again → loading (deploying a loading one asks the server again)
#   load fails → failed (the server is down or refused the version)
#   reconcile  loading | ready | failed → what the inference server reports, the same one
#              included (a server that restarted loads the version again)
#   stop       loading | ready | failed → stopped
# stopped is final: deploying the version again makes a new row.
DEPLOYMENT_TRANSITIONS: Mapping[DeploymentStatus, frozenset[DeploymentStatus]] = {
    D.loading: frozenset({D.loading, D.ready, D.failed, D.stopped}),
    D.ready: frozenset({D.ready, D.loading, D.failed, D.stopped}),
    D.failed: frozenset({D.failed, D.loading, D.ready, D.stopped}),
    D.stopped: frozenset(),
}

V = DatasetVersionStatus
# A prepared version is created `preparing` and ends ready or failed; an uploaded one is
# created ready. Neither changes after that.
DATASET_VERSION_TRANSITIONS: Mapping[DatasetVersionStatus, frozenset[DatasetVersionStatus]] = {
    V.preparing: frozenset({V.ready, V.failed}),
    V.ready: frozenset(),
    V.failed: frozenset(),
}

U = UploadStatus
UPLOAD_TRANSITIONS: Mapping[UploadStatus, frozenset[UploadStatus]] = {
    U.open: frozenset({U.completed}),
    U.completed: frozenset(),
}

J = JobStatus
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    J.queued: frozenset({J.running, J.succeeded, J.failed}),
    J.running: frozenset({J.succeeded, J.failed}),
    J.succeeded: frozenset(),
    J.failed: frozenset(),
}

TABLES: Mapping[type[enum.StrEnum], Mapping] = {
    RunStatus: RUN_TRANSITIONS,
    SweepStatus: SWEEP_TRANSITIONS,
    DeploymentStatus: DEPLOYMENT_TRANSITIONS,
    DatasetVersionStatus: DATASET_VERSION_TRANSITIONS,
    UploadStatus: UPLOAD_TRANSITIONS,
    JobStatus: JOB_TRANSITIONS,
}


class HasStatus(Protocol):
    id: int
    status: str


def allowed(current: str, target: S) -> bool:
    """Whether the table holds the move `current` → `target` (of `target`'s kind)."""
    kind = type(target)
    try:
        source = kind(current)
    except ValueError:
        return False
    return target in TABLES[kind][source]


def sources(target: S) -> list[str]:
    """Every status that may move to `target`: the guard of an atomic `UPDATE ... WHERE
    status IN (...)`, so the database, not a read before the write, decides."""
    kind = type(target)
    return [str(s) for s, targets in TABLES[kind].items() if target in targets]


def check(current: str, target: S, *, what: str = "") -> None:
    """Raise `InvalidTransition` unless the table holds `current` → `target`."""
    if not allowed(current, target):
        label = what or type(target).__name__.removesuffix("Status").lower()
        raise InvalidTransition(f"{label} is {current}; it cannot become {target}")


def transition(row: HasStatus, target: S, *, what: str | None = None) -> S:
    """Move `row` to `target` after checking the table; returns the status it had before.

    `what` names the record in the refusal ("run 7"); the default is the kind and the id.
    """
    kind = type(target)
    before = kind(row.status)
    check(
        row.status,
        target,
        what=what or f"{kind.__name__.removesuffix('Status').lower()} {row.id}",
    )
    row.status = target
    return before
