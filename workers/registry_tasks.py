"""Celery tasks of the registry (queue cpu): exports and evaluations of a model version; and
`gguf_path_for_version`, the GGUF file of a version for the llama.cpp serving engine."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.celery_config import EVALUATE_TASK, EXPORT_TASK
from app.db.models import (
    Dataset,
    DatasetVersion,
    Evaluation,
    JobStatus,
    ModelExport,
    ModelVersion,
)
from app.db.session import session_scope
from app.services import artifacts
from app.services.registry import exports as model_exports
from app.services.registry import jobs as model_jobs
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
    with session_scope() as session:
        if not model_jobs.claim(session=session, job_type=ModelExport, job_id=export_id):
            return "skipped"
        export = session.get(ModelExport, export_id)
        version = session.get(ModelVersion, export.model_version_id) if export else None
        assert export is not None and version is not None
        kind, options = export.kind, dict(export.options)
        try:
            source = artifacts.existing(version.storage_key)
        except Exception as exc:  # the version's files were removed after the export was asked
            _fail(ModelExport, export_id, exc)
            return "failed"
        sample = _training_sample(session, version)
        name = f"{version.registered_model.name}-v{version.version}"
    key = f"exports/{int(export_id)}"
    out_dir = artifacts.resolve(key)
    shutil.rmtree(out_dir, ignore_errors=True)
    progress = _progress(ModelExport, export_id)
    try:
        results = _build(kind, options, source, out_dir, name, progress, sample)
    except Exception as exc:  # any failure becomes the export's visible error
        shutil.rmtree(out_dir, ignore_errors=True)
        _fail(ModelExport, export_id, exc)
        return "failed"
    size = sum(p.stat().st_size for p in Path(out_dir).iterdir() if p.is_file())
    try:
        artifacts.publish(key)  # the web that streams the download may be on another host
    except Exception as exc:
        _fail(ModelExport, export_id, exc)
        return "failed"
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


def _adapter_base(adapter: Path) -> Path:
    """The base folder of a LoRA adapter, checked like any deployment path."""
    from app.core.settings import get_settings
    from workers.inference.registry import resolve_model_path

    config = json.loads((adapter / "adapter_config.json").read_text())
    return resolve_model_path(
        str(config.get("base_model_name_or_path", "")), get_settings()
    ).directory


def _build(
    kind: str,
    options: dict[str, Any],
    source: Path,
    out_dir: Path,
    name: str,
    progress: Callable[[float], None],
    sample: tuple[Path, str] | None,
) -> dict:
    """The export's files in out_dir; its report."""
    from workers.engine.export import export_onnx, merge_adapter

    if kind == "onnx":
        return export_onnx(
            source,
            out_dir,
            quantize=bool(options.get("quantize")),
            progress=progress,
            sample=sample,
        )
    if kind == "merged":
        return merge_adapter(source, _adapter_base(source), out_dir, progress)
    if kind != "gguf":
        raise ValueError(f"unknown export kind {kind!r}")
    from workers.engine.gguf import export_gguf

    quantization = str(options.get("quantization", "q8_0"))
    if not (source / "adapter_config.json").is_file():
        return export_gguf(source, out_dir, quantization=quantization, name=name, progress=progress)
    # A LoRA adapter is merged into its base first: llama.cpp runs the merged weights.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="merged-", dir=out_dir.parent) as merged:
        merge_adapter(source, _adapter_base(source), Path(merged), lambda v: progress(v * 0.3))
        results = export_gguf(
            Path(merged),
            out_dir,
            quantization=quantization,
            name=name,
            progress=lambda v: progress(0.3 + v * 0.7),
        )
    return {**results, "merged_adapter": True}


def gguf_path_for_version(version_id: int, quantization: str = "q8_0") -> Path:
    """The GGUF file of a model version in that quantisation (f16, q8_0, q4_k_m): the newest
    succeeded export's file, or a new export made now, in this process, and recorded like
    one from the registry page (so it is listed and downloadable there too).

    For the llama.cpp serving engine. Raises ValueError (unknown quantisation, or an
    architecture llama.cpp cannot run: the message names it) or RuntimeError (the export
    failed; the message is the export's error).
    """
    from app.services.registry import gguf as gguf_support

    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"model version {version_id} not found")
        try:
            quantization = model_exports.gguf_quantization(quantization)
            gguf_support.check_exportable(artifacts.existing(version.storage_key))
        except Exception as exc:  # domain errors carry the person-readable reason
            raise ValueError(getattr(exc, "message", str(exc))) from exc
        done = session.scalars(
            select(ModelExport)
            .where(
                ModelExport.model_version_id == version.id,
                ModelExport.kind == "gguf",
                ModelExport.status == JobStatus.succeeded,
            )
            .order_by(ModelExport.id.desc())
        )
        for export in done:
            if export.options.get("quantization") != quantization or not export.storage_key:
                continue
            file = (export.results or {}).get("file")
            try:
                path = artifacts.existing(export.storage_key) / str(file)
            except Exception:
                continue
            if file and path.is_file():
                return path
        export = ModelExport(
            workspace_id=version.workspace_id,
            model_version_id=version.id,
            kind="gguf",
            options={"quantization": quantization},
            status=JobStatus.queued,
            progress=0.0,
            results={},
        )
        session.add(export)
        session.flush()
        export_id = export.id
    if export_version.run(export_id) != "succeeded":
        with session_scope() as session:
            failed = session.get(ModelExport, export_id)
            raise RuntimeError(f"GGUF export {export_id} failed: {failed.error if failed else ''}")
    with session_scope() as session:
        made = session.get(ModelExport, export_id)
        assert made is not None and made.storage_key
        return artifacts.existing(made.storage_key) / str(made.results["file"])


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
        harness = (
            (version.storage_key, dict(evaluation.options))
            if evaluation.kind in ("harness", "judge") and version is not None
            else None
        )
        evaluation_kind, workspace_id = evaluation.kind, evaluation.workspace_id
    if harness is not None:
        # Outside the session: a harness run takes minutes and holds no transaction open.
        if evaluation_kind == "judge":
            return _evaluate_judge(evaluation_id, workspace_id, *harness)
        return _evaluate_harness(evaluation_id, *harness)
    with session_scope() as session:
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
    figures: dict[str, Any] = metrics.pop("figures", None) or {}
    return _succeeded(evaluation_id, metrics, samples, figures)


def _succeeded(
    evaluation_id: int, metrics: dict[str, Any], samples: Any, figures: dict[str, Any]
) -> str:
    """Record an evaluation's results, whatever its kind, and end it succeeded; a NaN metric
    (an undefined score, e.g. one class missing) is left out because JSON has no NaN."""
    with session_scope() as session:
        model_jobs.finish(
            session=session,
            job_type=Evaluation,
            job_id=evaluation_id,
            metrics={k: v for k, v in metrics.items() if v == v},
            samples=samples,
            figures=figures,
        )
    return "succeeded"


def _evaluate_harness(evaluation_id: int, storage_key: str, options: dict[str, Any]) -> str:
    """An lm-evaluation-harness evaluation: the task file's rows run by lm_eval in this process
    on the version's weights (workers/engine/harness.py); per-task results go to figures."""
    from workers.engine.harness import evaluate_harness

    try:
        metrics, samples, figures = evaluate_harness(
            artifacts.existing(storage_key),
            artifacts.existing(str(options["task_key"])),
            task_type=str(options["task_type"]),
            num_fewshot=int(options.get("num_fewshot", 0)),
            metrics=list(options.get("metrics") or []),
            regex=options.get("regex"),
            max_new_tokens=int(options.get("max_new_tokens", 32)),
            max_rows=int(options.get("max_rows", 500)),
            apply_chat_template=bool(options.get("apply_chat_template")),
            progress=_progress(Evaluation, evaluation_id),
        )
    except Exception as exc:
        _fail(Evaluation, evaluation_id, exc)
        return "failed"
    return _succeeded(evaluation_id, metrics, samples, figures)


def _evaluate_judge(
    evaluation_id: int, workspace_id: int, storage_key: str, options: dict[str, Any]
) -> str:
    """A judge evaluation: the version judges the chosen arena votes (workers/engine/judge.py);
    each verdict goes to figures, the agreement with people to metrics."""
    from app.services.evaluation import arena
    from workers.engine.judge import generate_answers, judge

    try:
        if options.get("versions"):
            # A match: both versions answer the prompts here, then the judge reads the pairs.
            prompts = list(options["prompts"])
            a, b = options["versions"]
            answers = [
                generate_answers(
                    artifacts.existing(side["storage_key"]),
                    prompts,
                    int(options.get("max_new_tokens", 64)),
                )
                for side in (a, b)
            ]
            items = [
                {"question": prompt, "answer_a": x, "answer_b": y, "human": "none",
                 "model_a": a["name"], "model_b": b["name"]}
                for prompt, x, y in zip(prompts, answers[0], answers[1], strict=True)
            ]  # fmt: skip
        else:
            with session_scope() as session:
                items = arena.judge_items(
                    session=session, workspace_id=workspace_id, vote_ids=list(options["vote_ids"])
                )
        if not items:
            raise ValueError("the judged votes were deleted")
        metrics, samples, figures = judge(
            artifacts.existing(storage_key),
            items,
            mode=str(options.get("mode", "pairwise")),
            rubric=options.get("rubric"),
            progress=_progress(Evaluation, evaluation_id),
        )
    except Exception as exc:
        _fail(Evaluation, evaluation_id, exc)
        return "failed"
    return _succeeded(evaluation_id, metrics, samples, figures)
