"""The web side's thin Celery client: sends work by task name, never imports the workers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.core.celery_config import (
    BATCH_TASK,
    CALIBRATE_TASK,
    CPU_QUEUE,
    GPU_QUEUE,
    MODEL_VIEW_TASK,
    PREPARE_TASK,
    TRAIN_TASK,
    celery_options,
)
from app.core.errors import ServiceUnavailable
from app.core.settings import get_settings


@lru_cache
def celery_client() -> Celery:
    client = Celery("llmide-web")
    client.conf.update(celery_options(get_settings()))
    return client


def enqueue_training(run_id: int) -> str:
    return _send(TRAIN_TASK, [run_id], GPU_QUEUE, "the run was not launched")


def enqueue_preparation(version_id: int) -> str:
    return _send(PREPARE_TASK, [version_id], CPU_QUEUE, "the preparation was not started")


def enqueue_model_view(payload: dict[str, Any]) -> str:
    return _send(MODEL_VIEW_TASK, [payload], CPU_QUEUE, "the model view was not started")


def enqueue_batch(batch_id: int) -> str:
    return _send(BATCH_TASK, [batch_id], CPU_QUEUE, "the batch was not started")


def _send(task: str, args: list[Any], queue: str, consequence: str) -> str:
    try:
        result = celery_client().send_task(
            task,
            args=args,
            queue=queue,
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
            f"the job queue is not reachable ({type(exc).__name__}); {consequence}, "
            "try again shortly"
        ) from exc
    return str(result.id)


def enqueue(task_name: str, args: list[int], queue: str) -> str:
    """Send a registry job (export, evaluation) by name; a refused send is a clear 503."""
    return _send(task_name, list(args), queue, "nothing was started")


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
