"""The poison-message limit: no task is redelivered for ever.

Tasks are acknowledged late and rejected back to the queue when their worker is lost, so a
dead worker's work is not lost. A task that kills every worker it reaches (out of memory, a
crash in native code) would then loop: the probe's calibration was killed and redelivered
again and again. Every task therefore counts its deliveries in the database
(`app/services/task_deliveries.py`) before it runs; one delivered more than
`task_max_deliveries` times without finishing is not run again: its run, dataset version or job
fails with the reason, and the message is acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from app.core.celery_config import (
    CALIBRATE_TASK,
    EVALUATE_TASK,
    EXPORT_TASK,
    PREPARE_TASK,
    TRAIN_TASK,
)
from app.core.settings import get_settings
from app.db.session import session_scope
from app.services import task_deliveries

log = logging.getLogger(__name__)

POISONED = "poisoned"


def poison_reason(deliveries: int) -> str:
    return (
        f"this task was handed to a worker {deliveries - 1} times and its worker died each "
        "time (out of memory or a crash), so it is not tried again; if it ran out of memory, "
        "try a smaller batch, sequence length or model"
    )


def _fail_run(args: tuple[Any, ...], reason: str) -> None:
    from app.db.models import Run, RunStatus
    from app.domain import lifecycle
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        run = session.get(Run, int(args[0]))
        if run is not None and lifecycle.allowed(run.status, RunStatus.failed):
            run_execution.finish(
                session=session, run_id=run.id, status=RunStatus.failed, error=reason
            )


def _fail_version(args: tuple[Any, ...], reason: str) -> None:
    from app.services.datasets import prep as dataset_prep

    with session_scope() as session:
        dataset_prep.fail(session=session, version_id=int(args[0]), error=reason)


def _fail_job(job_type_name: str) -> Callable[[tuple[Any, ...], str], None]:
    def fail(args: tuple[Any, ...], reason: str) -> None:
        from app.db import models
        from app.domain import lifecycle
        from app.domain.lifecycle import JobStatus
        from app.services.registry import jobs as model_jobs

        job_type = getattr(models, job_type_name)
        with session_scope() as session:
            job = session.get(job_type, int(args[0]))
            if job is not None and lifecycle.allowed(job.status, JobStatus.failed):
                model_jobs.finish(session=session, job_type=job_type, job_id=job.id, error=reason)

    return fail


def _fail_calibration(args: tuple[Any, ...], reason: str) -> None:
    from app.services import estimate

    base_model, batch_size, block_size = args[:3]
    estimate.write_calibration(base_model, int(batch_size), int(block_size), error=reason)


# What giving up means for each task: the object a person looks at says why.
GIVE_UP: dict[str, Callable[[tuple[Any, ...], str], None]] = {
    TRAIN_TASK: _fail_run,
    PREPARE_TASK: _fail_version,
    EXPORT_TASK: _fail_job("ModelExport"),
    EVALUATE_TASK: _fail_job("Evaluation"),
    CALIBRATE_TASK: _fail_calibration,
}


class GuardedTask(Task):
    """Every task of the app: counted per delivery, given up after too many."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if not task_id:
            return super().__call__(*args, **kwargs)
        try:
            with session_scope() as session:
                deliveries = task_deliveries.count(
                    session=session, task_id=task_id, task_name=self.name
                )
        except Exception:  # the database away: the task itself will say so
            log.exception("counting the deliveries of task %s failed", task_id)
            return super().__call__(*args, **kwargs)
        if deliveries > get_settings().task_max_deliveries:
            reason = poison_reason(deliveries)
            log.error("giving up task %s %s%r: %s", self.name, task_id, args, reason)
            give_up = GIVE_UP.get(self.name)
            if give_up is not None:
                give_up(tuple(args), reason)
            self._forget(task_id)
            return POISONED
        try:
            return super().__call__(*args, **kwargs)
        finally:
            # Ended in this process (returned or raised): not a lost delivery.
            self._forget(task_id)

    @staticmethod
    def _forget(task_id: str) -> None:
        try:
            with session_scope() as session:
                task_deliveries.forget(session=session, task_id=task_id)
        except Exception:
            log.exception("clearing the deliveries of task %s failed", task_id)
