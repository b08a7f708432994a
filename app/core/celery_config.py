"""Celery settings shared by the web's thin client and the workers: one place for queue facts."""

from __future__ import annotations

from typing import Any

from app.core.settings import Settings

TRAIN_TASK = "llmide.train_run"
# One more node of a multi-node run (docs/fleet.md): joins the rendezvous of the train_run
# task that claimed the run; the run is trained by all its nodes or by none.
TRAIN_NODE_TASK = "llmide.train_node"
# Registry jobs (queue cpu): ONNX / merged exports and evaluations of a model version.
EXPORT_TASK = "llmide.export_version"
EVALUATE_TASK = "llmide.evaluate_version"
CALIBRATE_TASK = "llmide.calibrate_training"
PREPARE_TASK = "llmide.prepare_dataset"  # a new dataset version from its parent and a recipe
MODEL_VIEW_TASK = "llmide.model_view"  # rows as a model sees them, stored as a JSON artifact
BATCH_TASK = "llmide.run_batch"  # an OpenAI batch: its requests through the inference server
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"


def celery_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # No result backend: run state lives in the database, which both sides already share.
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # A dead worker's long task goes back to the queue and resumes from its checkpoint.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Every training run gets a fresh process: GPU memory, torch threads and CUDA pinning
        # never leak from one run into the next.
        "worker_max_tasks_per_child": 1,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_default_queue": CPU_QUEUE,
    }
    if settings.redis_url:
        # Redis redelivers an unacked task after this timeout; training can run for hours.
        options["broker_transport_options"] = {"visibility_timeout": 12 * 3600}
    return options
