"""OpenAI `fine_tuning.jobs`: runs seen as jobs (`ftjob-<run id>`), with events and checkpoints.

Status mapping (run → job): queued → queued, running → running, succeeded → succeeded,
failed → failed, cancelled → cancelled, and interrupted → running, because an interrupted
run (its worker died) is redelivered and resumes from its last checkpoint by itself. A run
asked to cancel is `cancelled` from that moment (its worker stops within a step), and a paused
one (`runs.paused`) is `paused` until it is resumed: the status a cancel or pause answers
stays what every later read says.

LoRA and QLoRA are this server's extension `llmide.adapter` (docs/openai-jobs.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, Workspace
from app.core.errors import NotFound, ValidationFailed
from app.db.models import Checkpoint, Run, RunEvent, RunStatus
from app.openai.common import (
    CHECKPOINT_PREFIX,
    EVENT_PREFIX,
    JOB_PREFIX,
    finite,
    parse_id,
    parse_number,
    unix,
    unix_or_none,
)
from app.openai.files import dataset_for_file, file_id, results_file_id
from app.openai.schemas import (
    Adapter,
    Dpo,
    DpoHyperparameters,
    EventLevel,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    Hyperparameters,
    JobError,
    JobStatus,
    Llmide,
    Method,
    Supervised,
)
from app.services.registry import registration
from app.services.registry import versions as registry
from app.services.runs import access as run_access
from app.services.runs import results as job_results
from app.services.runs import service as runs
from app.services.runs import timeline as run_timeline
from app.services.runs.config import (
    DEFAULT_BETA,
    DEFAULT_LEARNING_RATE,
    DEFAULT_TASK,
    RunConfig,
)
from app.services.workspaces.access import WorkspaceContext

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai: fine-tuning"])

JOB_STATUS: dict[RunStatus, JobStatus] = {
    RunStatus.queued: "queued",
    RunStatus.running: "running",
    RunStatus.succeeded: "succeeded",
    RunStatus.failed: "failed",
    RunStatus.cancelled: "cancelled",
    RunStatus.interrupted: "running",  # it will be picked up again and resume
}
EVENT_LEVEL: dict[str, EventLevel] = {
    "info": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
}
# Our metric names where OpenAI has its own; the evaluation covers the whole validation set.
METRIC_NAMES = {"eval_loss": ("valid_loss", "full_valid_loss")}


def job_id(run_id: int) -> str:
    return f"{JOB_PREFIX}{run_id}"


def _run_for_job(*, session: Session, ctx: WorkspaceContext, job: str) -> Run:
    run_id = parse_id(job, JOB_PREFIX, noun="fine-tuning job")
    try:
        return run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    except NotFound:
        raise NotFound(f"no such fine-tuning job: {job!r}") from None


def _run_config(body: FineTuningJobCreate) -> RunConfig:
    """OpenAI's hyperparameters as a RunConfig: "auto" keeps our defaults."""
    chosen = body.chosen_hyperparameters()
    values: dict[str, float | int | str] = {}
    adapter = body.llmide.adapter if body.llmide else None
    if adapter is not None:
        values["method"] = adapter.type
        for ours, theirs in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout")):
            value = getattr(adapter, theirs)
            if value is None:
                continue
            if adapter.type == "full":
                raise ValidationFailed(
                    f"llmide.adapter.{theirs} applies to a lora or qlora adapter, not a full "
                    "fine-tune",
                    param=f"llmide.adapter.{theirs}",
                )
            values[ours] = value
    if chosen.n_epochs != "auto":
        values["epochs"] = chosen.n_epochs
    if chosen.batch_size != "auto":
        values["batch_size"] = chosen.batch_size
    if chosen.learning_rate_multiplier != "auto":
        values["learning_rate"] = DEFAULT_LEARNING_RATE * chosen.learning_rate_multiplier
    if body.seed is not None:
        values["seed"] = body.seed
    if body.method_type == "dpo":
        values["task_type"] = "dpo"
        beta = getattr(chosen, "beta", "auto")
        if beta != "auto":
            values["beta"] = beta
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error.get("loc") else ""
        param = {
            "learning_rate": "hyperparameters.learning_rate_multiplier",
            "epochs": "hyperparameters.n_epochs",
            "batch_size": "hyperparameters.batch_size",
            "beta": "method.dpo.hyperparameters.beta",
        }.get(field, field or None)
        raise ValidationFailed(f"{param}: {error['msg']}", param=param) from None


def _hyperparameters(config: dict) -> Hyperparameters:
    defaults = RunConfig()
    epochs = float(config.get("epochs", defaults.epochs))
    learning_rate = float(config.get("learning_rate", defaults.learning_rate))
    return Hyperparameters(
        batch_size=int(config.get("batch_size", defaults.batch_size)),
        learning_rate_multiplier=round(learning_rate / DEFAULT_LEARNING_RATE, 6),
        n_epochs=int(epochs) if epochs.is_integer() else epochs,
    )


def _method(run: Run, hyperparameters: Hyperparameters) -> Method:
    """The job's method as OpenAI shows it: dpo for a DPO run (asked for, or chosen by its
    preference data), supervised for the rest."""
    config = run.config
    task = config.get("task_type")
    if task == "auto" and run.dataset_version is not None:
        task = DEFAULT_TASK.get(run.dataset_version.schema, task)
    if task != "dpo":
        return Method(supervised=Supervised(hyperparameters=hyperparameters))
    beta = config.get("beta")
    return Method(
        type="dpo",
        dpo=Dpo(
            hyperparameters=DpoHyperparameters(
                **hyperparameters.model_dump(),
                beta=float(beta) if beta is not None else DEFAULT_BETA["dpo"],
            )
        ),
    )


def _check_training_data(method: str, schema: str) -> None:
    """OpenAI's rule: a DPO job reads preference pairs, a supervised one conversations."""
    preference = schema in ("preference", "kto")
    if method == "dpo" and schema != "preference":
        raise ValidationFailed(
            "a dpo job needs a training file of preference pairs (input, preferred_output, "
            f"non_preferred_output); this file holds {schema} rows",
            param="training_file",
        )
    if method == "supervised" and preference:
        raise ValidationFailed(
            f"this training file holds {schema} data: create the job with "
            'method={"type": "dpo"} to tune on it',
            param="training_file",
        )


def _llmide(config: dict) -> Llmide:
    method = str(config.get("method", "full"))
    if method == "full":
        return Llmide(adapter=Adapter(type="full"))
    defaults = RunConfig()
    return Llmide(
        adapter=Adapter(
            type=method,  # type: ignore[arg-type]
            r=int(config.get("lora_r", defaults.lora_r)),
            alpha=int(config.get("lora_alpha", defaults.lora_alpha)),
            dropout=float(config.get("lora_dropout", defaults.lora_dropout)),
        )
    )


def job_status(run: Run) -> JobStatus:
    """The job's status: the run's, except a pause and a requested cancel, which show at once."""
    status = RunStatus(run.status)
    if run.paused and status in (RunStatus.cancelled, RunStatus.running, RunStatus.interrupted):
        return "paused"
    if run.cancel_requested and not status.is_terminal:
        return "cancelled"
    return JOB_STATUS[status]


def _trained_tokens(session: Session, run: Run) -> int | None:
    """Tokens trained on (all epochs, padding excluded); null while the job runs, as at OpenAI."""
    if not RunStatus(run.status).is_terminal:
        return None
    value = runs.newest_metric(session=session, run_id=run.id, name="trained_tokens")
    return int(value) if value is not None else None


def to_job(*, session: Session, ctx: WorkspaceContext, run: Run) -> FineTuningJob:
    status = RunStatus(run.status)
    fine_tuned_model = None
    if status == RunStatus.succeeded:
        version = registry.version_for_run(session=session, run_id=run.id)
        fine_tuned_model = version.serving_name if version is not None else None
    error = None
    if status == RunStatus.failed:
        error = JobError(code="training_failed", message=run.error or "the run failed")
    hyperparameters = _hyperparameters(run.config)
    finish = runs.estimated_finish(session=session, run=run)
    result_files = []
    if status.is_terminal and job_results.has_metrics(session=session, run_id=run.id):
        result_files.append(results_file_id(run.id))
    return FineTuningJob(
        id=job_id(run.id),
        created_at=unix(run.created_at),
        error=error,
        fine_tuned_model=fine_tuned_model,
        finished_at=unix_or_none(run.finished_at),
        hyperparameters=hyperparameters,
        method=_method(run, hyperparameters),
        model=run.base_model,
        organization_id=ctx.workspace.slug,
        status=job_status(run),
        trained_tokens=_trained_tokens(session, run),
        result_files=result_files,
        training_file=file_id(run.dataset_id),
        validation_file=(
            file_id(run.validation_dataset_id) if run.validation_dataset_id is not None else None
        ),
        seed=int(run.config.get("seed", RunConfig().seed)),
        estimated_finish=unix(finish) if finish is not None else None,
        llmide=_llmide(run.config),
    )


@router.post("", response_model=FineTuningJob)
def create_fine_tuning_job(
    body: FineTuningJobCreate, session: SessionDep, ctx: Workspace
) -> FineTuningJob:
    config = _run_config(body)
    training = dataset_for_file(
        session=session, ctx=ctx, file=body.training_file, param="training_file"
    )
    _check_training_data(body.method_type, training.format)
    validation = None
    if body.validation_file is not None:
        validation = dataset_for_file(
            session=session, ctx=ctx, file=body.validation_file, param="validation_file"
        )
        _check_training_data(body.method_type, validation.format)
    try:
        run = runs.create_run(
            session=session,
            ctx=ctx,
            dataset_id=training.id,
            config=config,
            base_model=body.model,
            validation_dataset_id=validation.id if validation else None,
            suffix=body.suffix,
        )
    except ValidationFailed as exc:
        if exc.param != "method":
            raise
        # The run's `method` is what this route calls llmide.adapter.type.
        raise ValidationFailed(exc.message, param="llmide.adapter.type") from None
    return to_job(session=session, ctx=ctx, run=run)


@router.get("", response_model=FineTuningJobList)
def list_fine_tuning_jobs(
    session: SessionDep,
    ctx: Workspace,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobList:
    before_id = None
    if after is not None:
        before_id = parse_number(after, JOB_PREFIX)
        if before_id is None:
            raise ValidationFailed(f"after: {after!r} is not a fine-tuning job id", param="after")
    rows = runs.page_for_workspace(session=session, ctx=ctx, before_id=before_id, limit=limit + 1)
    return FineTuningJobList(
        data=[to_job(session=session, ctx=ctx, run=r) for r in rows[:limit]],
        has_more=len(rows) > limit,
    )


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
def retrieve_fine_tuning_job(
    fine_tuning_job_id: str, session: SessionDep, ctx: Workspace
) -> FineTuningJob:
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    return to_job(session=session, ctx=ctx, run=run)


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_fine_tuning_job(
    fine_tuning_job_id: str, session: SessionDep, ctx: Workspace
) -> FineTuningJob:
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    run = runs.cancel(session=session, ctx=ctx, run_id=run.id)
    return to_job(session=session, ctx=ctx, run=run)


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_fine_tuning_job(
    fine_tuning_job_id: str, session: SessionDep, ctx: Workspace
) -> FineTuningJob:
    """Stop the job at the end of its step with a checkpoint; `resume` continues from it."""
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    run = runs.pause(session=session, ctx=ctx, run_id=run.id)
    return to_job(session=session, ctx=ctx, run=run)


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_fine_tuning_job(
    fine_tuning_job_id: str, session: SessionDep, ctx: Workspace
) -> FineTuningJob:
    """Queue a paused job again; it continues from the checkpoint its pause saved."""
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    run = runs.resume_paused(session=session, ctx=ctx, run_id=run.id, status_word=job_status(run))
    return to_job(session=session, ctx=ctx, run=run)


# --- events -------------------------------------------------------------------------------
def _event_id(run: Run, entry: run_timeline.TimelineEntry) -> str:
    if entry.kind == "log":
        return f"{EVENT_PREFIX}{entry.seq}"
    return f"{EVENT_PREFIX}{run.id}-step-{entry.seq}"


def _event_cursor(run: Run, after: str) -> tuple[run_timeline.Kind, int]:
    """`ftevent-<event id>` is a log line, `ftevent-<run id>-step-<step>` a metrics event."""
    head, sep, step = after.partition("-step-")
    if sep:
        if parse_number(head, EVENT_PREFIX) == run.id and step.isdigit() and len(step) <= 10:
            return "step", int(step)
    else:
        number = parse_number(after, EVENT_PREFIX)
        if number is not None:
            return "log", number
    raise ValidationFailed(f"after: {after!r} is not an event id of this job", param="after")


def _metrics_event(run: Run, entry: run_timeline.TimelineEntry) -> FineTuningJobEvent:
    values = finite(entry.values)
    data: dict[str, float | int] = {"step": entry.seq}
    if run.total_steps:
        data["total_steps"] = run.total_steps
    for name, value in values.items():
        for openai_name in METRIC_NAMES.get(name, (name,)):
            data[openai_name] = value
    parts = []
    if "train_loss" in data:
        parts.append(f"training loss={data['train_loss']:.4f}")
    if "valid_loss" in data:
        parts.append(f"validation loss={data['valid_loss']:.4f}")
    total = f"/{run.total_steps}" if run.total_steps else ""
    return FineTuningJobEvent(
        id=_event_id(run, entry),
        created_at=unix(entry.at),
        level="info",
        message=f"Step {entry.seq}{total}: " + (", ".join(parts) or "metrics recorded"),
        type="metrics",
        data=data,
    )


def _message_event(
    run: Run, entry: run_timeline.TimelineEntry, event: RunEvent
) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=_event_id(run, entry),
        created_at=unix(event.created_at),
        level=EVENT_LEVEL.get(event.level, "info"),
        message=event.message,
        type="message",
    )


@router.get("/{fine_tuning_job_id}/events", response_model=FineTuningJobEventList)
def list_fine_tuning_events(
    fine_tuning_job_id: str,
    session: SessionDep,
    ctx: Workspace,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobEventList:
    """The run's log lines and one `metrics` event per step, newest first."""
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    cursor = _event_cursor(run, after) if after is not None else None
    entries = run_timeline.page(session=session, run_id=run.id, after=cursor, limit=limit + 1)
    return FineTuningJobEventList(
        data=[
            _message_event(run, e, e.event) if e.event is not None else _metrics_event(run, e)
            for e in entries[:limit]
        ],
        has_more=len(entries) > limit,
    )


# --- checkpoints --------------------------------------------------------------------------
def _checkpoint_metrics(checkpoint: Checkpoint) -> dict[str, float]:
    values = finite(checkpoint.metrics or {})
    metrics = {"step": float(checkpoint.step)}
    if "train_loss" in values:
        metrics["train_loss"] = values["train_loss"]
    if "eval_loss" in values:
        metrics["valid_loss"] = metrics["full_valid_loss"] = values["eval_loss"]
    return metrics


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=FineTuningJobCheckpointList)
def list_fine_tuning_job_checkpoints(
    fine_tuning_job_id: str,
    session: SessionDep,
    ctx: Workspace,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> FineTuningJobCheckpointList:
    """Checkpoints newest first. The final one is named by its registered version; the others
    `<run's model>:ckpt-step-N`, which chat and completions serve from the checkpoint's folder
    (services.serving.routing.checkpoint_target)."""
    run = _run_for_job(session=session, ctx=ctx, job=fine_tuning_job_id)
    checkpoints = runs.checkpoints(session=session, run_id=run.id)[::-1]
    if after is not None:
        after_id = parse_number(after, CHECKPOINT_PREFIX)
        ids = [c.id for c in checkpoints]
        if after_id not in ids:
            raise ValidationFailed(
                f"after: {after!r} is not a checkpoint of this job", param="after"
            )
        checkpoints = checkpoints[ids.index(after_id) + 1 :]
    page = checkpoints[:limit]
    version = registry.version_for_run(session=session, run_id=run.id) if page else None
    base_name = registration.serving_name_for(run, ctx.workspace.slug)
    data = [
        FineTuningJobCheckpoint(
            id=f"{CHECKPOINT_PREFIX}{c.id}",
            created_at=unix(c.created_at),
            fine_tuned_model_checkpoint=(
                version.serving_name
                if version is not None and version.checkpoint_id == c.id
                else f"{base_name}:ckpt-step-{c.step}"
            ),
            fine_tuning_job_id=job_id(run.id),
            step_number=c.step,
            metrics=_checkpoint_metrics(c),
        )
        for c in page
    ]
    return FineTuningJobCheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(checkpoints) > limit,
    )
