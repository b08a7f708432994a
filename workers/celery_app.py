"""The Celery application the workers run: `celery -A workers.celery_app worker -Q gpu,cpu`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from app.core.celery_config import GPU_QUEUE, TRAIN_TASK, celery_options
from app.core.settings import get_settings
from app.db.session import session_scope
from app.services import run_execution, run_queue

log = logging.getLogger(__name__)

celery_app = Celery("llmide", include=["workers.tasks", "workers.registry_tasks"])
celery_app.conf.update(celery_options(get_settings()))
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
    without a finishing run: app/services/run_queue.tick, docs/queue.md."""
    while True:
        try:
            with session_scope() as session:
                run_queue.tick(session=session)
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
