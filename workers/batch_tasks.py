"""Celery task of the `cpu` queue for OpenAI batches: a thin adapter around
app.openai.batch_runner.run (which runs each request through the live route code)."""

from __future__ import annotations

import asyncio
import logging

from app.core.celery_config import BATCH_TASK
from app.db.session import session_scope
from app.openai import batch_runner
from app.services import batches
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name=BATCH_TASK, acks_late=True, reject_on_worker_lost=True)
def run_batch(batch_id: int) -> str:
    try:
        return asyncio.run(batch_runner.run(batch_id))
    except Exception as exc:  # recorded on the batch with its reason, not left in_progress
        log.exception("batch %s failed", batch_id)
        with session_scope() as session:
            batches.fail(session=session, batch_id=batch_id, message=f"{type(exc).__name__}: {exc}")
        return "failed"
