"""Celery tasks: thin adapters that claim a run, build the engine config and report back."""

from __future__ import annotations

import logging
from pathlib import Path

from app.core.celery_config import TRAIN_TASK
from app.core.errors import ValidationFailed
from app.db.models import Run, RunStatus
from app.db.session import session_scope
from app.services import artifacts, base_models, run_execution, run_queue
from workers.celery_app import celery_app
from workers.metrics_sink import RunReporter

log = logging.getLogger(__name__)


# Run config keys handed to the engine as they are (a run created before a key existed
# keeps the engine's default for it).
_ENGINE_KEYS = (
    "task_type",
    "method",
    "lr_scheduler",
    "warmup_steps",
    "warmup_ratio",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "eval_steps",
    "save_steps",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
)


def _engine_config(run: Run, resume_from: Path | None):  # type: ignore[no-untyped-def]
    from workers.engine import TrainConfig

    config = dict(run.config)
    validation = run.validation_dataset
    # Packaged and local models are found again on this worker (its own packages and models
    # folder); hub ids go to the engine as they are.
    model = base_models.require_known(run.base_model)
    return TrainConfig(
        base_model_path=Path(model.path) if model.path else None,
        gguf_file=model.gguf_file,
        **{key: config[key] for key in _ENGINE_KEYS if config.get(key) is not None},
        output_dir=artifacts.resolve(artifacts.run_dir_key(run.id)),
        # The exact dataset version the run was launched on (runs from before versions: the
        # dataset's own file, which is its version 1).
        train_file=artifacts.existing(
            run.dataset_version.storage_key if run.dataset_version else run.dataset.storage_key
        ),
        train_format=run.dataset_version.schema if run.dataset_version else run.dataset.format,
        validation_file=artifacts.existing(validation.storage_key) if validation else None,
        validation_format=validation.format if validation else None,
        base_model=run.base_model,
        learning_rate=config["learning_rate"],
        batch_size=config["batch_size"],
        epochs=config["epochs"],
        max_steps=config.get("max_steps"),
        eval_split=config["eval_split"],
        seed=config["seed"],
        block_size=config["block_size"],
        resume_from=resume_from,
    )


@celery_app.task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train_run(self, run_id: int) -> str:  # type: ignore[no-untyped-def]
    """Train one run to its end (succeeded, failed or cancelled) and register its final model."""
    from workers.engine import train

    with session_scope() as session:
        run = run_execution.claim(session=session, run_id=run_id, task_id=self.request.id)
        if run is None:
            log.info("run %s is not claimable (cancelled or taken); skipping", run_id)
            return "skipped"
        run_queue.record_worker_host(session=session, run_id=run_id)
        checkpoint = run_execution.latest_checkpoint(session=session, run_id=run_id)
        resume_from = artifacts.existing(checkpoint.storage_key) if checkpoint else None
        try:
            config = _engine_config(run, resume_from)
        except ValidationFailed as exc:  # e.g. a local base model removed since the launch
            run_execution.finish(
                session=session, run_id=run_id, status=RunStatus.failed, error=exc.message
            )
            return "failed"
        run_execution.add_event(
            session=session,
            run_id=run_id,
            message=(f"resuming from step {checkpoint.step}" if checkpoint else "run started")
            + f" (attempt {run.attempts})",
        )

    reporter = RunReporter(run_id)
    try:
        result = train(config, reporter)
    except Exception as exc:
        log.exception("run %s failed", run_id)
        reporter.close()
        with session_scope() as session:
            run_execution.finish(
                session=session,
                run_id=run_id,
                status=RunStatus.failed,
                error=f"{type(exc).__name__}: {exc}",
            )
        return "failed"
    reporter.close()
    status = RunStatus.cancelled if result.stopped else RunStatus.succeeded
    with session_scope() as session:
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=status,
            final_checkpoint_key=artifacts.key_for(result.final_dir),
            final_step=result.global_step,
            # The full evaluation (a confusion matrix, per-class scores) rides along with the
            # final checkpoint's metrics, which the run page shows.
            final_metrics={
                **result.metrics,
                **({"evaluation": result.report} if result.report else {}),
            },
        )
    return str(status)
