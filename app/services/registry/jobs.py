"""Exports (ONNX, int8 ONNX, merged LoRA, GGUF) and evaluations of model versions: records,
queueing, and the status updates the workers make."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.celery_config import CPU_QUEUE, EVALUATE_TASK, EXPORT_TASK
from app.core.errors import ValidationFailed
from app.db.base import utcnow
from app.db.models import Evaluation, JobStatus, ModelExport, ModelVersion, Role, User
from app.db.session import rows_changed
from app.domain import lifecycle
from app.services import arena, artifacts, audit, dataset_versions, datasets, harness_tasks
from app.services.registry import access as registry_access
from app.services.registry import gguf as gguf_support
from app.services.registry import kind as model_kind
from app.services.registry import prompt_fit
from app.services.registry.files import is_adapter
from app.services.workspaces import WorkspaceContext, get_in_workspace

EXPORT_KINDS = ("onnx", "merged", "gguf")
# llama.cpp's file types a GGUF export is written in (f16 by our writer, the rest by
# llama.cpp's quantiser); q8_0 when the request names none.
GGUF_QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")
DEFAULT_GGUF_QUANTIZATION = "q8_0"
# What every evaluation generates from unless the request brings its own prompts: the same
# prompts for every version, so samples compare side by side.
DEFAULT_PROMPTS = (
    "Hello! Who are you?",
    "Write one sentence about the weather.",
    "What is two plus two?",
)
MAX_PROMPTS = 10


def create_export(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    kind: str,
    quantize: bool = False,
    quantization: str | None = None,
) -> ModelExport:
    ctx.require(Role.editor)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    if kind not in EXPORT_KINDS:
        raise ValidationFailed(
            f"export kind must be one of {', '.join(EXPORT_KINDS)}", param="kind"
        )
    folder = artifacts.existing(version.storage_key)
    fmt = (version.lineage or {}).get("format")
    if kind == "merged" and not is_adapter(folder):
        raise ValidationFailed(
            "only a LoRA adapter version (with adapter_config.json) can be merged", param="kind"
        )
    if kind == "onnx" and (fmt == "gguf" or any(folder.glob("*.gguf"))):
        raise ValidationFailed("ONNX export needs safetensors weights, not GGUF", param="kind")
    if kind in ("onnx", "gguf") and model_kind.is_token_classifier_folder(folder):
        # Neither the ONNX quality check (labels per text) nor llama.cpp reads per-token heads.
        raise ValidationFailed(
            f"{kind} export of an entity (token classification) model is not supported yet: "
            "download the version (zip, safetensors) to serve it elsewhere",
            param="kind",
        )
    options: dict[str, Any] = {"quantize": bool(quantize)} if kind == "onnx" else {}
    if kind == "gguf":
        if quantize:
            raise ValidationFailed(
                "quantize is for ONNX exports; a GGUF export takes quantization "
                f"({', '.join(GGUF_QUANTIZATIONS)})",
                param="quantize",
            )
        options = {"quantization": gguf_quantization(quantization)}
        gguf_support.check_exportable(folder)
    elif quantization is not None:
        raise ValidationFailed(
            f"quantization applies to GGUF exports only, not to {kind}", param="quantization"
        )
    export = ModelExport(
        workspace_id=ctx.workspace.id,
        model_version_id=version.id,
        kind=kind,
        options=options,
        status=JobStatus.queued,
        progress=0.0,
        results={},
        created_by_id=ctx.user.id,
    )
    _save_and_send(session, export, EXPORT_TASK)
    return export


def gguf_quantization(value: str | None) -> str:
    """The request's GGUF quantisation, checked; a 400 names an unknown one."""
    if value is None:
        return DEFAULT_GGUF_QUANTIZATION
    cleaned = value.strip().lower()
    if cleaned not in GGUF_QUANTIZATIONS:
        raise ValidationFailed(
            f"unknown GGUF quantization {value[:40]!r}; use one of {', '.join(GGUF_QUANTIZATIONS)}",
            param="quantization",
        )
    return cleaned


def create_evaluation(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    dataset_id: int,
    max_rows: int = 200,
    prompts: list[str] | None = None,
    max_new_tokens: int = 32,
    dataset_version_id: int | None = None,
) -> Evaluation:
    ctx.require(Role.editor)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    dataset = datasets.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    if dataset_version_id is not None:
        # Another workspace's version is a 404, another dataset's a 400, one still preparing
        # a 409: the same rules as a run's dataset version.
        dataset_versions.version_for_run(
            session=session, ctx=ctx, dataset=dataset, version_id=dataset_version_id
        )
    classifier = model_kind.is_classifier(version)
    if model_kind.is_token_classifier(version):
        if dataset.format != "token_classification":
            raise ValidationFailed(
                f"{version.serving_name} finds entities: evaluate it on a token_classification "
                f"dataset (text + entities), not on {dataset.format} rows",
                param="dataset_id",
            )
    elif classifier and dataset.format != "classification":
        raise ValidationFailed(
            f"{version.serving_name} is a classifier: evaluate it on a classification dataset "
            f"(text + label), not on {dataset.format} rows",
            param="dataset_id",
        )
    # A classifier's samples come from the evaluated rows themselves unless prompts are given:
    # English chat prompts say nothing about, say, a Chinese headline classifier.
    defaults = () if classifier else DEFAULT_PROMPTS
    chosen = [p.strip() for p in (prompts or defaults) if p.strip()]
    if len(chosen) > MAX_PROMPTS or any(len(p) > 1000 for p in chosen):
        raise ValidationFailed(
            f"at most {MAX_PROMPTS} prompts of up to 1000 characters", param="prompts"
        )
    prompt_fit.check_prompts_fit(artifacts.resolve(version.storage_key), chosen, max_new_tokens)
    return _queue_evaluation(
        session=session,
        ctx=ctx,
        model_version_id=version.id,
        dataset_id=dataset.id,
        dataset_sha256=dataset.sha256,
        dataset_version_id=dataset_version_id,
        options={"max_rows": max_rows, "prompts": chosen, "max_new_tokens": max_new_tokens},
    )


# Harness evaluations (lm-evaluation-harness on an uploaded task file): bounds and defaults.
HARNESS_MAX_FEWSHOT = 25
HARNESS_GENERATION_METRICS = ("exact_match", "bleu", "rouge")


def create_harness_evaluation(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    data: bytes,
    filename: str,
    name: str | None = None,
    task_type: str | None = None,
    num_fewshot: int = 0,
    metrics: list[str] | None = None,
    regex: str | None = None,
    max_new_tokens: int | None = None,
    max_rows: int = 500,
    apply_chat_template: bool = False,
) -> Evaluation:
    """Queue an lm-evaluation-harness evaluation of a causal-LM version on an uploaded task file
    (multiple choice or generation; app/services/harness_tasks.py reads it and refuses a bad row
    with its number). The evaluation's `dataset_sha256` is the canonical rows' hash, so two
    versions run on the same file line up in the comparison."""
    ctx.require(Role.editor)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    if model_kind.is_classifier(version):
        raise ValidationFailed(
            f"{version.serving_name} is a classifier: harness tasks score a language model's "
            "continuations; evaluate a classifier on a labelled dataset",
            param="version_id",
        )
    if not 0 <= num_fewshot <= HARNESS_MAX_FEWSHOT:
        raise ValidationFailed(
            f"num_fewshot must be between 0 and {HARNESS_MAX_FEWSHOT}", param="num_fewshot"
        )
    if not 1 <= max_rows <= 5000:
        raise ValidationFailed("max_rows must be between 1 and 5000", param="max_rows")
    label = (name or filename.rsplit(".", 1)[0] or "task").strip()[:60]
    parsed = harness_tasks.parse(data, filename, task_type=task_type, name=label)
    if parsed.task_type == "multiple_choice":
        # Generation settings on a multiple-choice task would be silently meaningless.
        for param, value in (("metrics", metrics), ("regex", regex),
                             ("max_new_tokens", max_new_tokens)):  # fmt: skip
            if value:
                raise ValidationFailed(
                    f"{param} applies to generation tasks; multiple choice reports acc and "
                    "acc_norm",
                    param=param,
                )
        chosen_metrics: list[str] = ["acc", "acc_norm"]
    else:
        chosen_metrics = [m.strip() for m in (metrics or ["exact_match"]) if m.strip()]
        unknown = [m for m in chosen_metrics if m not in HARNESS_GENERATION_METRICS]
        if unknown or not chosen_metrics:
            raise ValidationFailed(
                f"unknown metric {', '.join(unknown) or '(none)'}: use "
                f"{', '.join(HARNESS_GENERATION_METRICS)}",
                param="metrics",
            )
        if regex:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValidationFailed(f"invalid regex: {exc}", param="regex") from exc
        if max_new_tokens is not None and not 1 <= max_new_tokens <= 256:
            raise ValidationFailed(
                "max_new_tokens must be between 1 and 256", param="max_new_tokens"
            )
    if num_fewshot and not parsed.fewshot_rows:
        smallest = min(parsed.tasks.values())
        if smallest <= num_fewshot:
            raise ValidationFailed(
                f"num_fewshot {num_fewshot} needs more rows: a task has only {smallest} and "
                "the file has no dev rows (a `split` column with dev) to draw examples from",
                param="num_fewshot",
            )
    task_key = harness_tasks.store(parsed)
    return _queue_evaluation(
        session=session,
        ctx=ctx,
        model_version_id=version.id,
        dataset_id=None,
        dataset_sha256=parsed.sha256,
        kind="harness",
        options={
            "name": label,
            "task_key": task_key,
            "task_type": parsed.task_type,
            "tasks": parsed.tasks,
            "fewshot_rows": parsed.fewshot_rows,
            "num_fewshot": num_fewshot,
            "metrics": chosen_metrics,
            "regex": regex or None,
            "max_new_tokens": max_new_tokens or 32,
            "max_rows": max_rows,
            "apply_chat_template": apply_chat_template,
        },
    )


JUDGE_MODES = ("pairwise", "rubric")


def create_judge_evaluation(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    mode: str = "pairwise",
    rubric: str | None = None,
    max_votes: int = 200,
    match: tuple[int, int] | None = None,
    prompts: list[str] | None = None,
    max_new_tokens: int = 64,
) -> Evaluation:
    """Queue a judge evaluation: the version (a causal LM) judges the workspace's arena votes —
    pairwise with the answers in both orders, or by rubric scores — and its verdicts are
    compared with the people's (docs/evaluation.md, "Judges")."""
    ctx.require(Role.editor)
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    if model_kind.is_classifier(version):
        raise ValidationFailed(
            f"{version.serving_name} is a classifier: a judge writes its verdict as text",
            param="version_id",
        )
    if mode not in JUDGE_MODES:
        raise ValidationFailed(f"mode must be one of {', '.join(JUDGE_MODES)}", param="mode")
    if rubric is not None and mode != "rubric":
        raise ValidationFailed("rubric applies to mode rubric", param="rubric")
    if not 1 <= max_votes <= 2000:
        raise ValidationFailed("max_votes must be between 1 and 2000", param="max_votes")
    if match is not None:
        return _create_judged_match(
            session=session, ctx=ctx, judge=version, mode=mode, rubric=rubric, match=match,
            prompts=prompts or [], max_new_tokens=max_new_tokens,
        )  # fmt: skip
    if prompts:
        raise ValidationFailed(
            "prompts go with versions (a match of two versions)", param="prompts"
        )
    votes = arena.list_votes(session=session, ctx=ctx, limit=max_votes, newest=True)
    if not votes:
        raise ValidationFailed(
            "the workspace has no arena votes to judge: vote in the arena first",
            param="version_id",
        )
    ids = sorted(v.id for v in votes)
    return _queue_evaluation(
        session=session,
        ctx=ctx,
        model_version_id=version.id,
        dataset_id=None,
        # The judged votes, by id: two judges on the same votes line up in the comparison.
        dataset_sha256=hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        kind="judge",
        options={"mode": mode, "rubric": rubric, "vote_ids": ids, "name": f"arena votes ({mode})"},
    )


def _create_judged_match(
    *,
    session: Session,
    ctx: WorkspaceContext,
    judge: ModelVersion,
    mode: str,
    rubric: str | None,
    match: tuple[int, int],
    prompts: list[str],
    max_new_tokens: int,
) -> Evaluation:
    """The judge compares two versions' answers to the prompts (pairwise in both orders, or
    by rubric): the worker generates both versions' replies, then judges them."""
    chosen = [p.strip() for p in prompts if p.strip()]
    if not chosen or len(chosen) > 50 or any(len(p) > 2000 for p in chosen):
        raise ValidationFailed(
            "a match needs 1 to 50 prompts of up to 2000 characters", param="prompts"
        )
    if match[0] == match[1]:
        raise ValidationFailed("a match compares two different versions", param="versions")
    if not 1 <= max_new_tokens <= 256:
        raise ValidationFailed("max_new_tokens must be between 1 and 256", param="max_new_tokens")
    sides = []
    for version_id in match:
        side = registry_access.get_version_for_member(
            session=session, ctx=ctx, version_id=version_id
        )
        if model_kind.is_classifier(side):
            raise ValidationFailed(f"{side.serving_name} is a classifier", param="versions")
        sides.append(side)
    payload = json.dumps({"versions": list(match), "prompts": chosen}, sort_keys=True)
    return _queue_evaluation(
        session=session,
        ctx=ctx,
        model_version_id=judge.id,
        dataset_id=None,
        dataset_sha256=hashlib.sha256(payload.encode()).hexdigest(),
        kind="judge",
        options={
            "mode": mode,
            "rubric": rubric,
            "prompts": chosen,
            "max_new_tokens": max_new_tokens,
            "versions": [
                {"id": s.id, "name": s.serving_name, "storage_key": s.storage_key} for s in sides
            ],
            "name": f"{sides[0].serving_name} vs {sides[1].serving_name} ({mode})",
        },  # fmt: skip
    )


def _queue_evaluation(*, session: Session, ctx: WorkspaceContext, **columns: Any) -> Evaluation:
    """Record an evaluation the caller has checked, queued and empty, and send it to a worker.
    Every kind starts the same way (queued, no progress, metrics or samples, by the caller);
    `columns` are what differs: the version, the data it is scored on, the kind, the options."""
    evaluation = Evaluation(
        workspace_id=ctx.workspace.id,
        **columns,
        status=JobStatus.queued,
        progress=0.0,
        metrics={},
        samples=[],
        created_by_id=ctx.user.id,
    )
    _save_and_send(session, evaluation, EVALUATE_TASK)
    return evaluation


def _save_and_send(session: Session, job: ModelExport | Evaluation, task: str) -> None:
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


def list_exports(*, session: Session, version: ModelVersion) -> list[ModelExport]:
    return list(
        session.scalars(
            select(ModelExport)
            .where(ModelExport.model_version_id == version.id)
            .order_by(ModelExport.id.desc())
        )
    )


def list_evaluations(*, session: Session, version: ModelVersion) -> list[Evaluation]:
    return list(
        session.scalars(
            select(Evaluation)
            .where(Evaluation.model_version_id == version.id)
            .order_by(Evaluation.id.desc())
        )
    )


def get_export(*, session: Session, ctx: WorkspaceContext, export_id: int) -> ModelExport:
    return get_in_workspace(
        session=session, ctx=ctx, model=ModelExport, row_id=export_id, what="export"
    )


def get_evaluation(*, session: Session, ctx: WorkspaceContext, evaluation_id: int) -> Evaluation:
    return get_in_workspace(
        session=session, ctx=ctx, model=Evaluation, row_id=evaluation_id, what="evaluation"
    )


# A difference whose 95% interval (±1.96 standard errors) excludes zero is marked as one.
Z95 = 1.96


def comparison(*, session: Session, ctx: WorkspaceContext, model_id: int) -> dict[str, Any]:
    """The newest finished evaluation of each version, grouped by what was evaluated (the same
    data = the same sha256, and the same kind: a harness file's rows are not a dataset's), so
    versions compare side by side on the same evaluation.

    Each group names a baseline (its lowest version) and, for every other version and scalar
    metric, the difference from it; where the evaluation reports standard errors (harness
    metrics: `<metric>_stderr`) also the difference's standard error, sqrt(se1² + se2²) (the
    versions are scored independently), its 95% interval and whether that excludes zero.
    """
    model = registry_access.get_model_for_member(session=session, ctx=ctx, model_id=model_id)
    rows = session.execute(
        select(Evaluation, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
        .where(
            ModelVersion.registered_model_id == model.id,
            Evaluation.status == JobStatus.succeeded,
        )
        .order_by(Evaluation.id)
    ).all()
    names = datasets.names_for(
        session=session, ctx=ctx, ids={e.dataset_id for e, _ in rows if e.dataset_id}
    )
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for evaluation, number in rows:
        harness = evaluation.kind == "harness"
        group = groups.setdefault(
            (evaluation.kind, evaluation.dataset_sha256),
            {
                "kind": evaluation.kind,
                "dataset_id": evaluation.dataset_id,
                "dataset_name": (
                    f"benchmark {evaluation.options.get('name', '')}".strip()
                    if harness
                    else names.get(evaluation.dataset_id or -1, "deleted dataset")
                ),
                "dataset_sha256": evaluation.dataset_sha256,
                "metrics": [],
                "versions": {},
            },
        )
        group["versions"][number] = {"evaluation_id": evaluation.id, **evaluation.metrics}
        for key, value in evaluation.metrics.items():
            scalar = isinstance(value, int | float) and not key.endswith("_stderr")
            if scalar and key not in group["metrics"]:
                group["metrics"].append(key)
    for group in groups.values():
        group["versions"] = dict(sorted(group["versions"].items()))
        group["baseline"] = next(iter(group["versions"]))
        group["differences"] = _differences(group)
    return {"model_id": model.id, "name": model.name, "datasets": list(groups.values())}


def _differences(group: dict[str, Any]) -> dict[int, dict[str, dict[str, Any]]]:
    """version -> metric -> {diff, stderr, low, high, significant} against the baseline."""
    base = group["versions"][group["baseline"]]
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for number, values in group["versions"].items():
        if number == group["baseline"]:
            continue
        row: dict[str, dict[str, Any]] = {}
        for metric in group["metrics"]:
            mine, theirs = values.get(metric), base.get(metric)
            if not isinstance(mine, int | float) or not isinstance(theirs, int | float):
                continue
            diff = float(mine) - float(theirs)
            entry: dict[str, Any] = {"diff": diff, "stderr": None, "low": None, "high": None,
                                     "significant": None}  # fmt: skip
            se_mine, se_base = values.get(f"{metric}_stderr"), base.get(f"{metric}_stderr")
            if isinstance(se_mine, int | float) and isinstance(se_base, int | float):
                se = (float(se_mine) ** 2 + float(se_base) ** 2) ** 0.5
                entry.update(
                    stderr=se,
                    low=diff - Z95 * se,
                    high=diff + Z95 * se,
                    significant=bool(se > 0 and abs(diff) > Z95 * se),
                )
            row[metric] = entry
        out[number] = row
    return out


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
