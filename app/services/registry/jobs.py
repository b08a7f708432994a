"""The life of an export or evaluation job as the database records it: saved and sent to a
worker, then claimed, its progress reported and its end recorded by the worker.

Each step commits at once (tests/test_commit_rule.py): the worker must find the job the web
sent, and the page polling a job must see its progress while the worker is still busy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.celery_config import CPU_QUEUE
from app.db.base import utcnow
from app.db.models import Evaluation, JobStatus, ModelExport, User
from app.db.session import rows_changed
from app.domain import lifecycle
from app.services.workspaces import audit


def save_and_send(session: Session, job: ModelExport | Evaluation, task: str) -> None:
    """Save the new job, then queue it; if the broker refuses, the record goes again (no job
    that never runs)."""
    session.add(job)
    session.flush()
    session.commit()
    try:
        job.task_id = task_queue.enqueue(task, [job.id], CPU_QUEUE)
    except Exception:
        session.delete(job)
        session.commit()
        raise
    # Recorded once the job is really queued: a refused one leaves no audit row.
    audit.record(
        session=session,
        actor=session.get(User, job.created_by_id) if job.created_by_id else None,
        action="model.evaluate" if isinstance(job, Evaluation) else "model.export",
        target_type="model_version",
        target_id=job.model_version_id,
        detail={"job_id": job.id, **({"kind": job.kind} if isinstance(job, ModelExport) else {})},
        workspace_id=job.workspace_id,
    )
    session.commit()


# --- the workers' side -----------------------------------------------------------------------
def claim(*, session: Session, job_type: type[ModelExport] | type[Evaluation], job_id: int) -> bool:
    """queued -> running, once: a redelivered task finds it taken and leaves it."""
    claimed = rows_changed(
        session,
        update(job_type)
        .where(job_type.id == job_id, job_type.status.in_(lifecycle.sources(JobStatus.running)))
        .values(status=JobStatus.running, progress=0.01),
    )
    session.commit()
    return bool(claimed)


def report_progress(
    *,
    session: Session,
    job_type: type[ModelExport] | type[Evaluation],
    job_id: int,
    progress: float,
) -> None:
    session.execute(
        update(job_type).where(job_type.id == job_id).values(progress=max(0.0, min(progress, 1.0)))
    )
    session.commit()


def finish(
    *,
    session: Session,
    job_type: type[ModelExport] | type[Evaluation],
    job_id: int,
    error: str | None = None,
    **values: Any,
) -> None:
    status = JobStatus.failed if error else JobStatus.succeeded
    session.execute(
        update(job_type)
        .where(job_type.id == job_id)
        .values(
            status=status,
            error=error,
            progress=1.0 if not error else job_type.progress,
            finished_at=utcnow(),
            **values,
        )
    )
    session.commit()
