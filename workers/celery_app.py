"""The Celery application the workers run: `celery -A workers.celery_app worker -Q gpu,cpu`."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from celery.worker.control import inspect_command

from app.core.celery_config import GPU_QUEUE, TRAIN_TASK, celery_options
from app.core.settings import get_settings
from app.db.session import session_scope
from app.services import scheduler
from app.services.runs import execution as run_execution

log = logging.getLogger(__name__)

celery_app = Celery(
    "llmide",
    include=[
        "workers.tasks",
        "workers.registry_tasks",
        "workers.prep_tasks",
        "workers.batch_tasks",
    ],
    # Every task counts its deliveries and is given up after too many (the poison limit).
    task_cls="workers.delivery_guard:GuardedTask",
)
celery_app.conf.update(celery_options(get_settings()))
# Files 0600 and folders 0700 from the first write on (the embedded broker's database included):
# app/core/file_modes.py.
get_settings().ensure_dirs()
app = celery_app


def requeue_orphaned_runs() -> list[int]:
    """Re-queue runs whose worker died (kill -9, OOM, a lost machine): they resume from their
    last checkpoint. Safe on every worker at once: marking a run interrupted is one guarded
    UPDATE, and only one task can claim it again."""
    with session_scope() as session:
        orphaned = run_execution.interrupt_orphaned_runs(session=session)
    for run_id in orphaned:
        log.warning("run %s was orphaned by a dead worker; re-queueing it", run_id)
        celery_app.send_task(TRAIN_TASK, args=[run_id], queue=GPU_QUEUE)
    return orphaned


def _sweep_forever(interval_s: float) -> None:
    while True:
        try:
            requeue_orphaned_runs()
        except Exception:  # the database may be briefly away; try again next round
            log.exception("looking for orphaned runs failed")
        time.sleep(interval_s)


def _queue_ticks_forever(interval_s: float) -> None:
    """Sweeps (pruning, next trials) and the queue (runs a failed send left waiting) move on
    without a finishing run: app/services/scheduler.tick, docs/queue.md."""
    while True:
        try:
            with session_scope() as session:
                scheduler.tick(session=session)
        except Exception:  # the database may be briefly away; try again next round
            log.exception("the queue tick failed")
        time.sleep(interval_s)


@worker_ready.connect
def start_orphan_sweeper(sender: Any = None, **_: Any) -> None:
    interval = max(1.0, get_settings().run_stale_after_s / 2)
    threading.Thread(
        target=_sweep_forever, args=(interval,), name="orphan-sweeper", daemon=True
    ).start()
    threading.Thread(
        target=_queue_ticks_forever,
        args=(get_settings().queue_tick_s,),
        name="queue-ticks",
        daemon=True,
    ).start()


@worker_shutting_down.connect
def checkpoint_running_tasks(sig: str = "", how: str = "", exitcode: int = 0, **_: Any) -> None:
    """On a warm shutdown (SIGTERM to the worker), pass SIGTERM on to the pool processes.

    Celery would otherwise wait for a training run to finish, for hours, until the
    orchestrator's SIGKILL loses everything since the last checkpoint. A training task traps
    SIGTERM (workers/tasks.py): it saves a checkpoint, hands the run back (interrupted,
    re-queued) and returns, and the worker then exits. Idle pool processes just exit.
    """
    if how != "Warm":
        return
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGTERM)


def gpu_for_child(index: int, gpus: list[str]) -> str | None:
    """The GPU a pool process trains on: one per child, by the child's pool index."""
    return gpus[index % len(gpus)] if gpus else None


def gpus_for_child(index: int, gpus: list[str], count: int) -> list[str]:
    """The GPUs of a run asking for `count` devices: the child's own GPU and the next ones
    of the list (a worker for multi-GPU runs is started with `-c 1` and all its GPUs)."""
    return [gpus[(index + k) % len(gpus)] for k in range(count)]


def worker_gpu_list() -> list[str]:
    """LLMIDE_WORKER_GPUS as a list ([] when unset: no pinning)."""
    return [g.strip() for g in get_settings().worker_gpus.split(",") if g.strip()]


@worker_process_init.connect
def drop_inherited_database_connections(**_: Any) -> None:
    """A pool process starts with none of the main process's database connections.

    The main process's threads (orphan sweeper, queue ticks) keep pooled connections open;
    a forked child that reused one would share its socket with the parent, and the two would
    interleave on one Postgres session ("connection in transaction status INTRANS", "server
    closed the connection unexpectedly"). dispose(close=False) gives the child a fresh pool
    and leaves the parent's connections alone (SQLAlchemy's recipe for os.fork).
    """
    from app.db.session import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


@worker_process_init.connect
def pin_one_gpu_per_child(**_: Any) -> None:
    """With LLMIDE_WORKER_GPUS="0,1,2,3" and `-c 4`, pool process i sees only GPU i.

    Set before the task imports torch, so CUDA only ever sees that device (cuda:0). A child
    that replaces a finished one (max_tasks_per_child=1) inherits its index, hence its GPU.
    """
    import os

    from billiard.process import current_process

    gpu = gpu_for_child(getattr(current_process(), "index", 0) or 0, worker_gpu_list())
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


@inspect_command(name="llmide_gpus")
def llmide_gpus(state: Any) -> dict[str, Any]:
    """What GPUs this worker's machine has (NVML), for the dashboard's workers page."""
    import os

    found: list[dict[str, Any]] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            found.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_total_mb": memory.total // 2**20,
                    "memory_used_mb": memory.used // 2**20,
                    "utilization": util.gpu,
                }
            )
    except Exception:  # no NVML, no driver: a CPU worker
        pass
    return {"gpus": found, "pinned": get_settings().worker_gpus or None, "pid": os.getpid()}
