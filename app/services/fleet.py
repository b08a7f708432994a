"""The worker fleet as the dashboard shows it: workers, their queues, GPUs and current runs.

Asked over the broker with `celery inspect` (a broadcast every worker answers) under a short
timeout. The embedded broker (kombu's SQLAlchemy transport) has no broadcast, so there the
answer says so instead of failing. Runs of other workspaces are shown only as "busy".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.celery_config import GPU_QUEUE, TRAIN_TASK
from app.core.settings import get_settings
from app.db.models import Run
from app.services.workspaces.access import WorkspaceContext

INSPECT_TIMEOUT_S = 1.5


@dataclass
class WorkerInfo:
    name: str
    queues: list[str] = field(default_factory=list)
    concurrency: int | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # {"run_id", "name"} or {"busy"}
    other_tasks: int = 0


@dataclass
class Fleet:
    available: bool
    reason: str | None
    workers: list[WorkerInfo]


def _inspect() -> dict[str, dict[str, Any]]:
    inspector = task_queue.celery_client().control.inspect(timeout=INSPECT_TIMEOUT_S)
    replies: dict[str, dict[str, Any]] = {}
    questions = (
        ("active", inspector.active),
        ("queues", inspector.active_queues),
        ("stats", inspector.stats),
        ("gpus", lambda: inspector._request("llmide_gpus")),
    )
    for key, ask in questions:
        answer = ask()
        if not answer and not replies:
            break  # nobody answered the first question: do not wait out the others too
        for worker, value in (answer or {}).items():
            replies.setdefault(worker, {})[key] = value
    return replies


def fleet(*, session: Session, ctx: WorkspaceContext) -> Fleet:
    if get_settings().broker_url.startswith("sqla+"):
        return Fleet(
            False,
            "the embedded broker cannot broadcast, so workers cannot be asked; with Redis "
            "(LLMIDE_REDIS_URL) this page lists them",
            [],
        )
    try:
        replies = _inspect()
    except Exception as exc:  # the broker is down or refuses: say so, never a 500
        return Fleet(False, f"the job queue is not reachable ({type(exc).__name__})", [])
    run_ids = {
        int(task["args"][0])
        for reply in replies.values()
        for task in reply.get("active") or []
        if task.get("name") == TRAIN_TASK and task.get("args")
    }
    mine = {
        run_id: name
        for run_id, name in session.execute(
            select(Run.id, Run.name).where(
                Run.id.in_(run_ids), Run.workspace_id == ctx.workspace.id
            )
        )
    }
    workers = []
    for name in sorted(replies):
        reply = replies[name]
        info = WorkerInfo(name=name)
        info.queues = [q.get("name", "?") for q in reply.get("queues") or []]
        pool = (reply.get("stats") or {}).get("pool") or {}
        info.concurrency = pool.get("max-concurrency")
        info.gpus = list((reply.get("gpus") or {}).get("gpus", []))
        for task in reply.get("active") or []:
            if task.get("name") == TRAIN_TASK and task.get("args"):
                run_id = int(task["args"][0])
                info.runs.append(
                    {"run_id": run_id, "name": mine[run_id]} if run_id in mine else {"busy": True}
                )
            else:
                info.other_tasks += 1
        workers.append(info)
    reason = None if workers else "no worker answered within the timeout"
    return Fleet(True, reason, workers)


# Where the NVIDIA driver lists this machine's GPUs (no torch, no NVML needed to look).
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def _local_gpu() -> bool:
    try:
        return NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
    except OSError:
        return False


def training_has_gpu() -> bool | None:
    """Whether any training worker has a CUDA GPU: True, False, or None when nobody can say.

    Embedded (the broker needs no server): the one worker is a child on this machine, so this
    machine's driver answers. With Redis: the workers serving the gpu queue are asked (as the
    fleet page asks them); no answer is "unknown", and unknown never refuses anything.
    """
    if get_settings().broker_url.startswith("sqla+"):
        return _local_gpu()
    try:
        replies = _inspect()
    except Exception:  # the broker is down: the launch itself will say so
        return None
    trainers = [
        reply
        for reply in replies.values()
        if any(q.get("name") == GPU_QUEUE for q in reply.get("queues") or [])
    ]
    if not trainers:
        return None
    return any((reply.get("gpus") or {}).get("gpus") for reply in trainers)
