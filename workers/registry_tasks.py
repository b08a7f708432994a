"""Celery tasks of the registry (queue cpu): exports and evaluations of a model version."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.celery_config import EVALUATE_TASK, EXPORT_TASK
from app.db.models import Dataset, DatasetVersion, Evaluation, ModelExport, ModelVersion
from app.db.session import session_scope
from app.services import artifacts, model_jobs
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


def _progress(
    job_type: type[ModelExport] | type[Evaluation], job_id: int
) -> Callable[[float], None]:
    def report(value: float) -> None:
        with session_scope() as session:
            model_jobs.report_progress(
                session=session, job_type=job_type, job_id=job_id, progress=value
            )

    return report


def _fail(job_type: type[ModelExport] | type[Evaluation], job_id: int, exc: Exception) -> None:
    log.exception("%s %s failed", job_type.__tablename__, job_id)
    with session_scope() as session:
        model_jobs.finish(
            session=session, job_type=job_type, job_id=job_id, error=f"{type(exc).__name__}: {exc}"
        )


def _training_sample(session: Session, version: ModelVersion) -> tuple[Path, str] | None:
    """The version's training data (file, format), for the export's quality rows, if present."""
    dataset_id = (version.lineage or {}).get("dataset_id")
    dataset = session.get(Dataset, dataset_id) if isinstance(dataset_id, int) else None
    if dataset is None or dataset.workspace_id != version.workspace_id:
        return None
    try:
        return artifacts.existing(dataset.storage_key), dataset.format
    except Exception:  # a missing file only costs the report its meaningful rows
        return None


@celery_app.task(name=EXPORT_TASK, acks_late=True, reject_on_worker_lost=True)
def export_version(export_id: int) -> str:
    """Build the export's files under exports/<id>/ and record the size/speed/quality report."""
    from workers.engine.export import export_onnx, merge_adapter
    from workers.inference.registry import resolve_model_path

    with session_scope() as session:
        if not model_jobs.claim(session=session, job_type=ModelExport, job_id=export_id):
            return "skipped"
        export = session.get(ModelExport, export_id)
        version = session.get(ModelVersion, export.model_version_id) if export else None
        assert export is not None and version is not None
        kind, options = export.kind, dict(export.options)
        source = artifacts.existing(version.storage_key)
        sample = _training_sample(session, version)
    key = f"exports/{int(export_id)}"
    out_dir = artifacts.resolve(key)
    shutil.rmtree(out_dir, ignore_errors=True)
    progress = _progress(ModelExport, export_id)
    try:
        if kind == "onnx":
            results = export_onnx(
                source,
                out_dir,
                quantize=bool(options.get("quantize")),
                progress=progress,
                sample=sample,
            )
        else:
            from app.core.settings import get_settings

            config = json.loads((source / "adapter_config.json").read_text())
            base = resolve_model_path(
                str(config.get("base_model_name_or_path", "")), get_settings()
            )
            results = merge_adapter(source, base.directory, out_dir, progress)
    except Exception as exc:  # any failure becomes the export's visible error
        shutil.rmtree(out_dir, ignore_errors=True)
        _fail(ModelExport, export_id, exc)
        return "failed"
    size = sum(p.stat().st_size for p in Path(out_dir).iterdir() if p.is_file())
    with session_scope() as session:
        model_jobs.finish(
            session=session,
            job_type=ModelExport,
            job_id=export_id,
            storage_key=key,
            size_bytes=size,
            results=results,
        )
    return "succeeded"


@celery_app.task(name=EVALUATE_TASK, acks_late=True, reject_on_worker_lost=True)
def evaluate_version(evaluation_id: int) -> str:
    """Perplexity, reply BLEU/ROUGE-L and generation samples of a version on a dataset."""
    from workers.engine.evaluation import evaluate

    with session_scope() as session:
        if not model_jobs.claim(session=session, job_type=Evaluation, job_id=evaluation_id):
            return "skipped"
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        version = session.get(ModelVersion, evaluation.model_version_id)
        dataset = evaluation.dataset
        try:
            if dataset is None or dataset.sha256 != evaluation.dataset_sha256:
                raise ValueError("the evaluated dataset was deleted or changed")
            source = artifacts.existing(version.storage_key)  # type: ignore[union-attr]
            data_key, data_format = dataset.storage_key, dataset.format
            if evaluation.dataset_version_id is not None:
                # The chosen (prepared) version's rows, not the upload's.
                chosen = session.get(DatasetVersion, evaluation.dataset_version_id)
                if chosen is None or chosen.dataset_id != dataset.id:
                    raise ValueError("the chosen dataset version was deleted")
                data_key, data_format = chosen.storage_key, chosen.schema
            data_file = artifacts.existing(data_key)
        except Exception as exc:
            _fail(Evaluation, evaluation_id, exc)
            return "failed"
        options = dict(evaluation.options)
    try:
        metrics, samples = evaluate(
            source,
            data_file,
            data_format,
            prompts=list(options.get("prompts") or []),
            max_rows=int(options.get("max_rows", 200)),
            max_new_tokens=int(options.get("max_new_tokens", 32)),
            progress=_progress(Evaluation, evaluation_id),
        )
    except Exception as exc:
        _fail(Evaluation, evaluation_id, exc)
        return "failed"
    with session_scope() as session:
        model_jobs.finish(
            session=session,
            job_type=Evaluation,
            job_id=evaluation_id,
            metrics={k: v for k, v in metrics.items() if v == v},  # NaN is not JSON
            samples=samples,
        )
    return "succeeded"
