"""A registered model's versions side by side: the newest finished evaluation of each, grouped
by what was evaluated, with each version's differences from the baseline."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Evaluation, JobStatus, ModelVersion
from app.services.datasets import service as datasets
from app.services.registry import access as registry_access
from app.services.workspaces.access import WorkspaceContext

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
