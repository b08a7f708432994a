"""Celery tasks: thin adapters that claim a run, build the engine config and report back."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import object_session

from app.core.celery_config import CALIBRATE_TASK, GPU_QUEUE, TRAIN_NODE_TASK, TRAIN_TASK
from app.core.errors import ValidationFailed
from app.core.settings import get_settings
from app.db.models import ModelVersion, Run, RunStatus
from app.db.session import session_scope
from app.services import artifacts, estimate
from app.services.registry import base_models, version_bases
from app.services.runs import execution as run_execution
from app.services.runs import queue as run_queue
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
    "devices",
    "logging_steps",
    "beta",
    "dpo_loss",
    "simpo_gamma",
    "kto_desirable_weight",
    "kto_undesirable_weight",
    "label_alignment",
)


def _base_version(run: Run) -> ModelVersion:
    """The registered version a run starts from (its config's base_version_id)."""
    version = object_session(run).get(ModelVersion, int(run.config["base_version_id"]))  # type: ignore[union-attr]
    if version is None:
        raise ValidationFailed("the run's base version was deleted", param="model")
    return version


def _teacher(run: Run) -> base_models.BaseModel | None:
    """A distilling run's teacher, found again on this worker (a version's folder, or a
    packaged or local model)."""
    config = run.config
    if config.get("teacher_version_id") is not None:
        version = object_session(run).get(ModelVersion, int(config["teacher_version_id"]))  # type: ignore[union-attr]
        if version is None:
            raise ValidationFailed("the run's teacher version was deleted", param="teacher")
        artifacts.existing(version.storage_key)  # fetched first from object storage
        return version_bases.as_base(version)
    if config.get("teacher"):
        return base_models.require_known(str(config["teacher"]))
    return None


def _engine_config(run: Run, resume_from: Path | None):
    from workers.engine import TrainConfig

    config = dict(run.config)
    validation = run.validation_dataset
    # Packaged and local models are found again on this worker (its own packages and models
    # folder); hub ids go to the engine as they are.
    if config.get("base_version_id") is not None:
        # A registered version (SFT → DPO): its own folder in the artifact store, fetched to
        # this worker first if it was trained on another host.
        version = _base_version(run)
        artifacts.existing(version.storage_key)
        model = version_bases.as_base(version)
    else:
        model = base_models.require_known(run.base_model)
    teacher = _teacher(run)
    return TrainConfig(
        teacher_path=Path(teacher.path) if teacher is not None and teacher.path else None,
        teacher_gguf_file=teacher.gguf_file if teacher is not None else None,
        distill_temperature=float(config.get("distill_temperature") or 2.0),
        distill_weight=float(config.get("distill_weight", 0.5)),
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
        early_stopping_patience=config.get("early_stopping_patience"),
        early_stopping_metric=config.get("early_stopping_metric") or "eval_loss",
        early_stopping_mode=config.get("early_stopping_mode") or "min",
    )


@contextmanager
def _checkpoint_on_sigterm(request_shutdown: Callable[[], None]) -> Iterator[None]:
    """While training, SIGTERM (a worker's warm shutdown, forwarded to its pool process by
    workers.celery_app) asks the engine to stop after this step with a checkpoint instead of
    killing the process, so a planned restart loses no work."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (eager tests, threads)
        return

    def handler(signum: int, frame: Any) -> None:
        request_shutdown()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@celery_app.task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train_run(self, run_id: int) -> str:
    """Train one run to its end (succeeded, failed or cancelled) and register its final model.

    A worker shutting down hands the run back instead (interrupted, re-queued) after saving a
    checkpoint.
    """
    with session_scope() as session:
        # The lease: claim() only takes a run that is queued, interrupted, or running with a
        # stale heartbeat, so a redelivered message whose run is alive elsewhere ends here.
        run = run_execution.claim(session=session, run_id=run_id, task_id=self.request.id)
        if run is None:
            log.info("run %s is not claimable (cancelled, finished or alive elsewhere)", run_id)
            return "skipped"
        run_queue.record_worker_host(session=session, run_id=run_id)
        point = run_execution.resume_point(session=session, run_id=run_id)
        resume_from = artifacts.existing(point[0]) if point else None
        try:
            config = _engine_config(run, resume_from)
        except ValidationFailed as exc:  # e.g. a local base model removed since the launch
            run_execution.finish(
                session=session, run_id=run_id, status=RunStatus.failed, error=exc.message
            )
            return "failed"
        retention = {k: v for k, v in run.config.items() if k.startswith("keep_")}
        nodes, attempt = run_queue.run_slots(run.config), run.attempts
        run_execution.add_event(
            session=session,
            run_id=run_id,
            message=(f"resuming from step {point[1]}" if point else "run started")
            + f" (attempt {run.attempts})",
        )

    if nodes > 1:
        ended = _train_on_several_nodes(run_id, attempt, nodes, config, retention)
    elif config.devices > 1:
        ended = _train_on_several_devices(run_id, config, retention)
    else:
        ended = _train_in_this_process(run_id, config, retention)
    if nodes > 1:
        with session_scope() as session:
            if not run_execution.holds_attempt(session=session, run_id=run_id, attempt=attempt):
                log.warning("run %s moved on past attempt %s; leaving it alone", run_id, attempt)
                return "superseded"
    if ended.gang_incomplete:
        with session_scope() as session:
            requeue = run_execution.gang_incomplete(
                session=session, run_id=run_id, nodes=nodes, waited_s=get_settings().gang_timeout_s
            )
        if requeue:
            celery_app.send_task(TRAIN_TASK, args=[run_id], queue=GPU_QUEUE)
        return "interrupted" if requeue else "failed"
    if ended.failure is not None and nodes > 1 and _lost_a_node(*ended.failure):
        with session_scope() as session:
            requeue = run_execution.node_lost(
                session=session, run_id=run_id, nodes=nodes, error=ended.failure[0]
            )
        if requeue:
            celery_app.send_task(TRAIN_TASK, args=[run_id], queue=GPU_QUEUE)
        return "interrupted" if requeue else "failed"
    if ended.failure is not None:
        with session_scope() as session:
            run_execution.finish(
                session=session,
                run_id=run_id,
                status=RunStatus.failed,
                error=ended.failure[0],
                error_detail=ended.failure[1],
            )
        return "failed"
    reason = ended.stop_reason
    if reason == "shutdown":
        with session_scope() as session:
            requeue = run_execution.interrupt_for_shutdown(
                session=session, run_id=run_id, step=ended.global_step
            )
        if requeue:
            celery_app.send_task(TRAIN_TASK, args=[run_id], queue=GPU_QUEUE)
        return "interrupted"
    # Stop-and-keep and early stopping end as succeeded: the model is kept and registered.
    status = RunStatus.cancelled if reason == "cancel" else RunStatus.succeeded
    final_key = ended.final_key or (artifacts.key_for(ended.final_dir) if ended.final_dir else None)
    if final_key is not None and not ended.published:
        try:
            artifacts.publish(final_key)  # the registry and inference servers fetch it
        except Exception as exc:
            with session_scope() as session:
                run_execution.finish(
                    session=session,
                    run_id=run_id,
                    status=RunStatus.failed,
                    error=f"the final model could not be stored: {exc}",
                )
            return "failed"
    with session_scope() as session:
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=status,
            final_checkpoint_key=final_key,
            final_step=ended.global_step,
            # The full evaluation (a confusion matrix, per-class scores) rides along with the
            # final checkpoint's metrics, which the run page shows.
            final_metrics={
                **ended.metrics,
                **({"evaluation": ended.report} if ended.report else {}),
            },
        )
    return str(status)


@dataclass(frozen=True)
class _Ended:
    """How the engine left a run: a result (with why it stopped early, if it did) or a
    failure (error, traceback tail) for the run page."""

    final_dir: Path | None = None
    global_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None  # "cancel" | "shutdown" | "keep" | None
    failure: tuple[str, str] | None = None
    final_key: str | None = None  # set where rank 0 trained on another node
    published: bool = False  # the final model is in the shared store already
    gang_incomplete: bool = False  # a multi-node run whose nodes did not all start


def _train_in_this_process(run_id: int, config: Any, retention: dict[str, Any]) -> _Ended:
    from workers.engine import train

    reporter = RunReporter(run_id, retention=retention)
    try:
        with _checkpoint_on_sigterm(reporter.request_shutdown):
            result = train(config, reporter)
    except Exception as exc:
        log.exception("run %s failed", run_id)
        reporter.close()
        return _Ended(failure=run_execution.describe_failure(exc, traceback.format_exc()))
    reporter.close()
    return _Ended(
        final_dir=result.final_dir,
        global_step=result.global_step,
        metrics=result.metrics,
        report=result.report,
        stop_reason=reporter.stop_reason if result.stopped else None,
    )


def _train_on_several_devices(
    run_id: int,
    config: Any,
    retention: dict[str, Any],
    rendezvous: Any = None,
    node_label: str = "",
    result_key: str | None = None,
) -> _Ended:
    """torchrun with one process per device (workers/torchrun_launch.py); rank 0 reports.
    With a rendezvous: this machine's share of a multi-node run."""
    from workers.torchrun_launch import TorchrunLaunch

    try:
        cuda_devices = _pinned_gpus(config.devices)
    except ValueError as exc:
        return _Ended(failure=(str(exc), ""))
    launch = TorchrunLaunch(
        run_id=run_id,
        config=config,
        retention=retention,
        processes=config.devices,
        cuda_devices=cuda_devices,
        rendezvous=rendezvous,
        node_label=node_label,
        result_key=result_key,
    )
    with _checkpoint_on_sigterm(launch.forward_shutdown):
        launch.start()
        outcome = launch.wait()
    if outcome.gang_incomplete:
        return _Ended(gang_incomplete=True, failure=(outcome.error or "", outcome.traceback))
    if outcome.result is None:
        log.error("run %s failed on %s devices: %s", run_id, config.devices, outcome.error)
        return _Ended(
            failure=run_execution.describe_error(outcome.error or "failed", outcome.traceback)
        )
    result = outcome.result
    reason = result["stop_reason"]
    if result["stopped"] and launch.shutdown_requested and reason != "cancel":
        reason = "shutdown"  # whichever rank saw the SIGTERM first, the worker is leaving
    return _Ended(
        final_dir=Path(result["final_dir"]),
        global_step=int(result["global_step"]),
        metrics=result["metrics"],
        report=result["report"],
        stop_reason=reason,
        final_key=result.get("final_key"),
        published=bool(result.get("published")),
    )


# How a rank says its peer on another machine is gone (gloo, NCCL, torchrun's agent), or that
# torchrun ended its ranks without any of them reporting an error of its own.
PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "DistNetworkError",
    "DistBackendError",
    "RendezvousClosedError",
    "communicator was aborted",
    "without an error report",
)


def _lost_a_node(error: str, traceback_text: str) -> bool:
    """Whether a multi-node attempt failed because a node went away, not because of the run."""
    text = f"{error}\n{traceback_text}"
    return any(marker in text for marker in PEER_LOST)


def _rendezvous(run_id: int, attempt: int, nodes: int, endpoint: str, is_host: bool) -> Any:
    from workers.torchrun_launch import Rendezvous

    settings = get_settings()
    return Rendezvous(
        endpoint=endpoint,
        run_key=f"run-{run_id}-attempt-{attempt}",
        nodes=nodes,
        is_host=is_host,
        timeout_s=settings.gang_timeout_s,
        local_addr=settings.node_address,
    )


def result_key(run_id: int, attempt: int) -> str:
    """Where global rank 0 of a multi-node attempt leaves its result for the claiming task."""
    return f"{artifacts.run_dir_key(run_id)}/launch/attempt-{int(attempt)}/result.json"


def _train_on_several_nodes(
    run_id: int, attempt: int, nodes: int, config: Any, retention: dict[str, Any]
) -> _Ended:
    """The claiming task of a multi-node run: host the rendezvous, send one train_node task
    per other node, train this node's share. The rendezvous waits for all of them (the gang):
    if they do not all join in time, none trains and the run goes back to the queue."""
    settings = get_settings()
    with socket.socket() as probe:  # a free port for the rendezvous store this node hosts
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    endpoint = f"{settings.node_address or socket.gethostname()}:{port}"
    for _ in range(nodes - 1):
        celery_app.send_task(TRAIN_NODE_TASK, args=[run_id, attempt, endpoint], queue=GPU_QUEUE)
    with session_scope() as session:
        run_execution.add_event(
            session=session,
            run_id=run_id,
            message=f"{nodes} nodes × {config.devices} device(s): waiting for every node to "
            f"join the rendezvous at {endpoint} (at most {settings.gang_timeout_s:.0f} s)",
        )
    # Until every node has joined nobody reports, so this task keeps the run's heartbeat
    # fresh while the gang gathers (else the sweeper would take a slow start for a dead run).
    # Only that long: afterwards rank 0's reporter does it, and a rank 0 that died must let
    # the heartbeat go stale.
    gathering = threading.Event()
    thread = threading.Thread(
        target=_heartbeat_while_gathering,
        args=(run_id, settings.gang_timeout_s, gathering),
        name=f"run-{run_id}-gang-heartbeat",
        daemon=True,
    )
    thread.start()
    try:
        return _train_on_several_devices(
            run_id,
            config,
            retention,
            rendezvous=_rendezvous(run_id, attempt, nodes, endpoint, is_host=True),
            node_label="0",
            result_key=result_key(run_id, attempt),
        )
    finally:
        gathering.set()
        thread.join(timeout=5)


def _heartbeat_while_gathering(run_id: int, for_s: float, done: threading.Event) -> None:
    deadline = time.monotonic() + for_s
    while not done.wait(run_execution.HEARTBEAT_EVERY_S) and time.monotonic() < deadline:
        try:
            with session_scope() as session:
                run_execution.heartbeat(session=session, run_id=run_id)
        except Exception:  # a database hiccup: the next beat retries
            log.exception("heartbeat of run %s while its nodes gather failed", run_id)


# Not redelivered when its worker dies: that node's peers then fail, and the claiming task
# hands the whole run back (a node task alone cannot resume anything).
@celery_app.task(name=TRAIN_NODE_TASK, bind=True, acks_late=True, reject_on_worker_lost=False)
def train_node(self, run_id: int, attempt: int, endpoint: str) -> str:
    """Another node of a multi-node run: fetch the data and the checkpoint like the claiming
    task did, then join its rendezvous. A message for an older attempt does nothing."""
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None or run.status != RunStatus.running or run.attempts != attempt:
            log.info("node task of run %s attempt %s is stale; not joining", run_id, attempt)
            return "skipped"
        nodes = run_queue.run_slots(run.config)
        retention = {k: v for k, v in run.config.items() if k.startswith("keep_")}
        point = run_execution.resume_point(session=session, run_id=run_id)
        try:
            resume_from = artifacts.existing(point[0]) if point else None
            config = _engine_config(run, resume_from)
        except Exception:  # the gang then misses this node and the run is re-queued
            log.exception("node task of run %s could not prepare; not joining", run_id)
            return "failed"
    ended = _train_on_several_devices(
        run_id,
        config,
        retention,
        rendezvous=_rendezvous(run_id, attempt, nodes, endpoint, is_host=False),
        node_label=(self.request.id or "node")[:12],
        result_key=result_key(run_id, attempt),
    )
    if ended.gang_incomplete:
        return "gang incomplete"
    return "node failed" if ended.failure is not None else "node done"


def _pinned_gpus(count: int) -> list[str] | None:
    """The GPUs a run of `count` devices trains on: this pool process's own GPU and the next
    ones of LLMIDE_WORKER_GPUS (None: the worker pins nothing, every GPU stays visible)."""
    from workers.celery_app import gpus_for_child, worker_gpu_list

    gpus = worker_gpu_list()
    if not gpus:
        return None
    if count > len(gpus):
        raise ValueError(
            f"this run asks for {count} devices but its worker has {len(gpus)} GPU(s) "
            f"(LLMIDE_WORKER_GPUS={','.join(gpus)})"
        )
    from billiard.process import current_process

    return gpus_for_child(getattr(current_process(), "index", 0) or 0, gpus, count)


# Acknowledged on receipt, never redelivered: a calibration is a hint for the launch form, and
# one whose worker died must not kill the next worker too (the estimate asks again later).
@celery_app.task(name=CALIBRATE_TASK, acks_late=False, reject_on_worker_lost=False)
def calibrate_training(base_model: str, batch_size: int, block_size: int) -> float | None:
    """Time a few training steps of this shape on this worker's device and cache the result
    for the launch estimate (on the gpu queue: the device that will train is the one timed).

    Never a shape that cannot fit: the memory estimate is checked against what a calibration
    may use here first, and the timing runs in a child process capped at that much
    (workers/engine/calibrate.run_capped), so a wrong estimate ends in a clean refusal.
    """
    from workers.engine.calibrate import run_capped

    budget, where = calibration_budget()
    needs = estimate.estimate(
        base_model=base_model,
        batch_size=batch_size,
        block_size=block_size,
        device_bytes=budget,
        device_label=where,
    )
    if needs.fits is False:
        error = (
            f"not timed: it needs about {needs.total_bytes / estimate.GIB:.1f} GiB and a "  # type: ignore[operator]
            f"calibration may use {budget / estimate.GIB:.1f} GiB {where}"
        )
        log.warning(
            "calibration of %s b%s s%s refused: %s", base_model, batch_size, block_size, error
        )
        estimate.write_calibration(base_model, batch_size, block_size, error=error)
        return None
    outcome = run_capped(
        base_model,
        batch_size=batch_size,
        block_size=block_size,
        memory_limit_bytes=budget,
        timeout_s=get_settings().calibration_timeout_s,
    )
    if outcome.error or not outcome.tokens_per_second:
        error = outcome.error or "the timing gave no rate"
        estimate.write_calibration(base_model, batch_size, block_size, error=error)
        return None
    estimate.write_calibration(
        base_model,
        batch_size,
        block_size,
        tokens_per_second=outcome.tokens_per_second,
        device=outcome.device or "",
    )
    return outcome.tokens_per_second


def calibration_budget() -> tuple[int, str]:
    """(bytes a calibration may use, where): the setting, else half of what is free now, of
    the GPU this worker trains on or of the machine's RAM."""
    configured = get_settings().calibration_memory_gb
    if configured:
        return int(configured * estimate.GIB), "(LLMIDE_CALIBRATION_MEMORY_GB)"
    from workers.engine.device import plan_device

    plan = plan_device("auto")
    if plan.kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(plan.cuda_index or 0)
        return int(free) // 2, "here (half this worker's free GPU memory)"
    import psutil

    return int(psutil.virtual_memory().available) // 2, "here (half this worker's free RAM)"
