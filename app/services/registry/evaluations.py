"""Evaluations of model versions: on a dataset, on an lm-evaluation-harness task file, or as a
judge (of the arena's votes, or of two versions' answers); each checked before it is queued,
and the version's evaluations."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.celery_config import EVALUATE_TASK
from app.core.errors import ValidationFailed
from app.db.models import Evaluation, JobStatus, ModelVersion
from app.services import artifacts
from app.services.datasets import access as dataset_access
from app.services.datasets import versions as dataset_versions
from app.services.evaluation import arena, harness_tasks
from app.services.registry import access as registry_access
from app.services.registry import jobs as model_jobs
from app.services.registry import kind as model_kind
from app.services.registry import prompt_fit
from app.services.workspaces.access import WorkspaceContext

# What every evaluation generates from unless the request brings its own prompts: the same
# prompts for every version, so samples compare side by side.
DEFAULT_PROMPTS = (
    "Hello! Who are you?",
    "Write one sentence about the weather.",
    "What is two plus two?",
)
MAX_PROMPTS = 10


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
    version = registry_access.get_version_for_editor(
        session=session, ctx=ctx, version_id=version_id
    )
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
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
    (multiple choice or generation; app/services/evaluation/harness_tasks.py reads it and
    refuses a bad row with its number). The evaluation's `dataset_sha256` is the canonical rows'
    hash, so two versions run on the same file line up in the comparison."""
    version = registry_access.get_version_for_editor(
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
    version = registry_access.get_version_for_editor(
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
    model_jobs.save_and_send(session, evaluation, EVALUATE_TASK)
    return evaluation


def list_evaluations(*, session: Session, version: ModelVersion) -> list[Evaluation]:
    return list(
        session.scalars(
            select(Evaluation)
            .where(Evaluation.model_version_id == version.id)
            .order_by(Evaluation.id.desc())
        )
    )
