"""The web side's thin Celery client: sends work by task name, never imports the workers."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.core.celery_config import CALIBRATE_TASK, GPU_QUEUE, TRAIN_TASK, celery_options
from app.core.errors import ServiceUnavailable
from app.core.settings import get_settings


@lru_cache
def celery_client() -> Celery:
    client = Celery("llmide-web")
    client.conf.update(celery_options(get_settings()))
    return client


def enqueue_training(run_id: int) -> str:
    try:
        result = celery_client().send_task(
            TRAIN_TASK,
            args=[run_id],
            queue=GPU_QUEUE,
            retry=True,
            # Fail fast: a person is waiting for the launch button's answer.
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
        )
    except Exception as exc:  # kombu raises many transport-specific errors
        raise ServiceUnavailable(
            f"the job queue is not reachable ({type(exc).__name__}); the run was not launched, "
            "try again shortly"
        ) from exc
    return str(result.id)


def enqueue(task_name: str, args: list[int], queue: str) -> str:
    """Send a registry job (export, evaluation) by name; a refused send is a clear 503."""
    try:
        result = celery_client().send_task(
            task_name,
            args=args,
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_max": 1.0},
        )
    except Exception as exc:  # kombu raises many transport-specific errors
        raise ServiceUnavailable(
            f"the job queue is not reachable ({type(exc).__name__}); nothing was started, "
            "try again shortly"
        ) from exc
    return str(result.id)


def enqueue_calibration(base_model: str, batch_size: int, block_size: int) -> bool:
    """Ask a training worker to time a few steps of this shape; False if the queue is down
    (the estimate then just has no duration yet)."""
    try:
        celery_client().send_task(
            CALIBRATE_TASK,
            args=[base_model, batch_size, block_size],
            queue=GPU_QUEUE,
            retry=False,
        )
    except Exception:  # kombu raises many transport-specific errors
        return False
    return True
