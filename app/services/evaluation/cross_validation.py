"""K-fold cross-validation: k fold runs of one configuration, each on a dataset version whose
rows differ only in which are `validation`, their metrics per fold and as mean ± std, and the
model the user chooses (a fold's, or a final fit on every row) registered.

Folds are scikit-learn's: `StratifiedKFold` for classification data (each fold keeps the label
proportions), `KFold` otherwise, both shuffled with the seed. Rows a version already marks
`test` stay `test` in every fold (held out from the whole procedure); every other row is
`validation` in exactly one fold and `train` in the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, ValidationFailed
from app.db.models import (
    Checkpoint,
    CrossValidation,
    DatasetVersion,
    MetricPoint,
    ModelVersion,
    Role,
    Run,
    RunStatus,
)
from app.services import artifacts
from app.services.datasets import access as dataset_access
from app.services.datasets import versions as dataset_versions
from app.services.datasets.prep import version_key
from app.services.registry import registration
from app.services.runs import service as runs
from app.services.runs.config import RunConfig
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext, get_in_workspace

MIN_K, MAX_K = 2, 10
MAX_ROWS = 200_000


def _fold_assignment(rows: list[dict[str, Any]], k: int, seed: int, stratify: bool) -> list[int]:
    """The fold (0..k-1) each foldable row is validation in, by scikit-learn's splitters."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    fold = [0] * len(rows)
    placeholder = np.zeros(len(rows))
    if stratify:
        labels = [str(r.get("label", "")) for r in rows]
        smallest = min(labels.count(label) for label in set(labels))
        if smallest < k:
            raise ValidationFailed(
                f"stratified {k}-fold needs at least {k} rows of every label; the rarest has "
                f"{smallest} (choose a smaller k, or stratify=false)",
                param="k",
            )
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
            placeholder, labels
        )
    else:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder)
    for index, (_, held) in enumerate(splits):
        for row in held:
            fold[int(row)] = index
    return fold


def _write_version(rows: list[dict[str, Any]]) -> tuple[str, str, int]:
    """Canonical JSONL into the store by content: (sha256, key, bytes)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    data = text.encode()
    sha = hashlib.sha256(data).hexdigest()
    key = version_key(sha)
    if not artifacts.resolve(key).is_file():
        fd, tmp = artifacts.temp_file(".jsonl")
        with open(fd, "wb") as out:
            out.write(data)
        artifacts.commit_file(tmp, key)
    return sha, key, len(data)


def create(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    config: RunConfig,
    base_model: str | None = None,
    dataset_version_id: int | None = None,
    k: int = 5,
    stratify: bool | None = None,
    seed: int = 0,
    name: str | None = None,
) -> CrossValidation:
    """Make the k fold versions and launch the k fold runs (queued like any run)."""
    ctx.require(Role.editor)
    if not MIN_K <= k <= MAX_K:
        raise ValidationFailed(f"k must be between {MIN_K} and {MAX_K}", param="k")
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    source = dataset_versions.version_for_run(
        session=session, ctx=ctx, dataset=dataset, version_id=dataset_version_id
    )
    schema = "text" if source.schema == "txt" else source.schema
    if source.schema == "txt":
        raise ValidationFailed(
            "a plain-text upload has no rows to fold: prepare it into a version first",
            param="dataset_id",
        )
    classification = schema == "classification"
    if stratify and not classification:
        raise ValidationFailed(
            f"stratify needs classification data (labels); this dataset is {schema}",
            param="stratify",
        )
    stratified = classification if stratify is None else stratify
    lines = artifacts.existing(source.storage_key).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    if len(rows) > MAX_ROWS:
        raise ValidationFailed(
            f"cross-validation takes at most {MAX_ROWS} rows", param="dataset_id"
        )
    held_out = [r for r in rows if r.get("split") == "test"]
    foldable = [r for r in rows if r.get("split") != "test"]
    if len(foldable) < k:
        raise ValidationFailed(
            f"{k} folds need at least {k} rows outside the test split; there are {len(foldable)}",
            param="k",
        )
    folds = _fold_assignment(foldable, k, seed, stratified)
    label = (name or "").strip()[:200] or f"{k}-fold CV on {dataset.name}"
    cv = CrossValidation(
        workspace_id=ctx.workspace.id,
        name=label,
        dataset_id=dataset.id,
        source_version_id=source.id,
        base_model=base_model or "",
        config=config.model_dump(mode="json", exclude_unset=True),
        k=k,
        stratified=stratified,
        seed=seed,
        fold_version_ids=[],
        created_by_id=ctx.user.id,
    )
    session.add(cv)
    session.flush()
    version_ids: list[int] = []
    for index in range(k):
        fold_rows = [
            {**row, "split": "validation" if folds[i] == index else "train"}
            for i, row in enumerate(foldable)
        ] + held_out
        sha, key, size = _write_version(fold_rows)
        counts = {
            "train": sum(1 for f in folds if f != index),
            "validation": sum(1 for f in folds if f == index),
            "test": len(held_out),
        }
        version = DatasetVersion(
            workspace_id=ctx.workspace.id,
            dataset_id=dataset.id,
            version=dataset_versions.next_number(session=session, dataset=dataset),
            parent_id=source.id,
            schema=schema,
            sha256=sha,
            storage_key=key,
            num_rows=len(fold_rows),
            size_bytes=size,
            recipe={
                "cross_validation": {
                    "id": cv.id,
                    "fold": index + 1,
                    "k": k,
                    "seed": seed,
                    "stratified": stratified,
                }
            },  # fmt: skip
            report={"split": counts},
            status="ready",
            progress=1.0,
            created_by_id=ctx.user.id,
        )
        session.add(version)
        session.flush()
        version_ids.append(version.id)
    cv.fold_version_ids = version_ids
    cv_id = cv.id
    # No commit here: the first fold's create_run commits this with its run, before dispatch.
    launched: list[Run] = []
    try:
        for index, version_id in enumerate(version_ids):
            launched.append(
                runs.create_run(
                    session=session,
                    ctx=ctx,
                    dataset_id=dataset.id,
                    config=config,
                    base_model=base_model,
                    dataset_version_id=version_id,
                    name=f"{label} · fold {index + 1}/{k}",
                    sweep_fields={"cross_validation_id": cv_id, "cross_validation_fold": index + 1},
                )
            )
    except Exception:
        # A refused launch (quota, broker) leaves no half cross-validation: its runs and
        # versions go with it.
        for run in launched:
            runs.cancel(session=session, ctx=ctx, run_id=run.id)
        raise
    made = session.get(CrossValidation, cv_id)
    assert made is not None
    if not made.base_model and launched:
        made.base_model = launched[0].base_model
    audit.record(
        session=session,
        actor=ctx.user,
        action="cross_validation.create",
        target_type="cross_validation",
        target_id=cv_id,
        detail={"k": k, "runs": [r.id for r in launched]},
        workspace_id=ctx.workspace.id,
    )
    return made


def get(*, session: Session, ctx: WorkspaceContext, cv_id: int) -> CrossValidation:
    return get_in_workspace(
        session=session, ctx=ctx, model=CrossValidation, row_id=cv_id, what="cross-validation"
    )


def fold_runs(*, session: Session, cv: CrossValidation) -> list[Run]:
    return list(
        session.scalars(
            select(Run).where(Run.cross_validation_id == cv.id).order_by(Run.cross_validation_fold)
        )
    )


def _final_metrics(session: Session, run_ids: list[int]) -> dict[int, dict[str, float]]:
    """Each run's last value of every evaluation metric (eval_*): the fold's score."""
    out: dict[int, dict[str, float]] = {i: {} for i in run_ids}
    if not run_ids:
        return out
    points = session.execute(
        select(MetricPoint.run_id, MetricPoint.name, MetricPoint.value)
        .where(MetricPoint.run_id.in_(run_ids), MetricPoint.name.like("eval\\_%", escape="\\"))
        .order_by(MetricPoint.step)
    )
    for run_id, metric, value in points:
        if value is not None and math.isfinite(value):
            out[run_id][metric] = float(value)
    return out


def summary(*, session: Session, cv: CrossValidation) -> dict[str, Any]:
    """Per fold: its run, status and final metrics; per metric over the succeeded folds:
    mean, sample standard deviation (n - 1; 0 for one fold) and the number of folds."""
    folds = fold_runs(session=session, cv=cv)
    metrics = _final_metrics(session, [r.id for r in folds])
    done = [r for r in folds if r.status == RunStatus.succeeded]
    names = sorted({name for r in done for name in metrics[r.id]})
    aggregate: dict[str, dict[str, float]] = {}
    for name in names:
        values = [metrics[r.id][name] for r in done if name in metrics[r.id]]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        aggregate[name] = {"mean": mean, "std": math.sqrt(var), "folds": float(len(values))}
    active = {RunStatus.queued, RunStatus.running, RunStatus.interrupted}
    status = (
        "running" if any(r.status in active for r in folds)
        else "succeeded" if len(done) == len(folds) and folds
        else "failed" if not done
        else "partial"
    )  # fmt: skip
    final_fit = session.get(Run, cv.final_fit_run_id) if cv.final_fit_run_id else None
    return {
        "id": cv.id,
        "name": cv.name,
        "dataset_id": cv.dataset_id,
        "source_version_id": cv.source_version_id,
        "base_model": cv.base_model,
        "k": cv.k,
        "stratified": cv.stratified,
        "seed": cv.seed,
        "status": status,
        "folds": [
            {
                "fold": r.cross_validation_fold,
                "run_id": r.id,
                "status": r.status,
                "dataset_version_id": r.dataset_version_id,
                "metrics": metrics[r.id],
            }
            for r in folds
        ],
        "metrics": aggregate,
        "final_fit_run_id": cv.final_fit_run_id,
        "final_fit_status": final_fit.status if final_fit else None,
        "registered_version_id": cv.registered_version_id,
        "created_at": cv.created_at,
    }


def list_for_workspace(*, session: Session, ctx: WorkspaceContext) -> list[CrossValidation]:
    return list(
        session.scalars(
            select(CrossValidation)
            .where(CrossValidation.workspace_id == ctx.workspace.id)
            .order_by(CrossValidation.id.desc())
            .limit(100)
        )
    )


def register_fold(
    *, session: Session, ctx: WorkspaceContext, cv_id: int, fold: int
) -> ModelVersion:
    """Register the chosen fold's final model as a version (200 again if it already is)."""
    ctx.require(Role.editor)
    cv = get(session=session, ctx=ctx, cv_id=cv_id)
    run = next(
        (r for r in fold_runs(session=session, cv=cv) if r.cross_validation_fold == fold), None
    )
    if run is None:
        raise ValidationFailed(f"fold must be between 1 and {cv.k}", param="fold")
    if run.status != RunStatus.succeeded:
        raise Conflict(f"fold {fold} is {run.status}; only a succeeded fold can be registered")
    checkpoint = session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.is_final.is_(True))
    ).first()
    if checkpoint is None:
        raise Conflict(f"fold {fold} has no final model")
    version = registration.register_checkpoint(session=session, run=run, checkpoint=checkpoint)
    cv.registered_version_id = version.id
    audit.record(
        session=session,
        actor=ctx.user,
        action="cross_validation.register",
        target_type="cross_validation",
        target_id=cv.id,
        detail={"fold": fold, "version_id": version.id},
        workspace_id=ctx.workspace.id,
    )
    return version


def launch_final_fit(*, session: Session, ctx: WorkspaceContext, cv_id: int) -> Run:
    """A run of the same configuration on the source version (every non-test row trains, as
    the version's own split says), registered when it ends like any run."""
    ctx.require(Role.editor)
    cv = get(session=session, ctx=ctx, cv_id=cv_id)
    if cv.final_fit_run_id is not None:
        raise Conflict(
            f"cross-validation {cv.id} already has a final fit (run {cv.final_fit_run_id})"
        )
    run = runs.create_run(
        session=session,
        ctx=ctx,
        dataset_id=cv.dataset_id,
        config=RunConfig(**cv.config),
        base_model=cv.base_model or None,
        dataset_version_id=cv.source_version_id,
        name=f"{cv.name} · final fit",
    )
    cv.final_fit_run_id = run.id
    return run
