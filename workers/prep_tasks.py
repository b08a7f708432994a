"""Celery tasks of the `cpu` queue for datasets: prepare a version, compute a model view.

Thin adapters: they read state through `app.services.datasets.prep`, run the pure library
`workers.dataprep` and record the outcome. A failure is recorded on the version (or as an error
artifact of the model view) with its reason; nothing half-written is left in the store.
"""

from __future__ import annotations

import json
import logging
import os
from itertools import islice
from pathlib import Path
from typing import Any

from app.core.celery_config import MODEL_VIEW_TASK, PREPARE_TASK
from app.core.prep_recipe import ModelViewSettings, Recipe
from app.db.session import session_scope
from app.services import artifacts
from app.services.datasets import prep as dataset_prep
from workers.celery_app import celery_app

log = logging.getLogger(__name__)
SCRATCH_TOKENIZER_ROWS = 5000  # a model view trains its scratch tokenizer on this many rows


def _read(path: Path, schema: str):
    """Canonical rows of a version's file; a legacy plain-text upload gives text rows."""
    from workers.dataprep.run import read_rows, read_text_paragraphs

    if schema == "txt":
        return read_text_paragraphs(path)
    return read_rows(path, schema)


def _packaged_cache() -> Path:
    """Where converted packaged tokenizers are kept between worker processes."""
    path = artifacts.resolve("tokenizers/packaged")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _canonical_text_copy(storage_key: str) -> str:
    """Paragraphs of a plain-text artifact as a canonical {"text"} JSONL artifact (cached)."""
    source = artifacts.existing(storage_key)
    key = storage_key.rsplit(".", 1)[0] + ".canonical.jsonl"
    if not artifacts.resolve(key).is_file():
        fd, tmp = artifacts.temp_file(suffix=".jsonl")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in _read(source, "txt"):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        artifacts.commit_file(tmp, key)
    return key


def prepare(version_id: int) -> str:
    """Read the parent's canonical file, run the recipe, file the result as this version."""
    from workers.dataprep.run import prepare_file
    from workers.dataprep.tokenize import (
        BackgroundSink,
        TokenSink,
        load_tokenizer,
        tokenize_version,
    )

    with session_scope() as session:
        found = dataset_prep.begin(session=session, version_id=version_id)
        if found is None:
            log.info("dataset version %s is not preparing; skipping", version_id)
            return "skipped"
        version, parent = found
        recipe = Recipe.model_validate(version.recipe)
        schema, source_key = version.schema, parent.storage_key
        if parent.schema == "txt":
            # An old plain-text upload: its paragraphs become a canonical text file first.
            source_key = _canonical_text_copy(parent.storage_key)

    last = [0.0]

    def on_progress(fraction: float) -> None:
        if fraction - last[0] >= dataset_prep.PROGRESS_STEP:
            last[0] = fraction
            with session_scope() as session:
                dataset_prep.progress(session=session, version_id=version_id, fraction=fraction)

    workdir = artifacts.root() / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = None
    try:
        source = artifacts.existing(source_key)
        settings = recipe.tokenize
        cache_root = artifacts.resolve(dataset_prep.tokenized_root_key())
        sink = None
        if settings is not None and settings.tokenizer != "scratch":
            # A packaged tokenizer exists before the data does: tokenize in the same pass.
            tokenizer = load_tokenizer(settings, lambda: iter(()), packaged_cache=_packaged_cache())
            sink = BackgroundSink(
                TokenSink(
                    tokenizer=tokenizer, schema=schema, settings=settings, cache_root=cache_root
                )
            )
        try:
            prepared = prepare_file(
                source=source,
                schema=schema,
                recipe=recipe,
                workdir=workdir,
                on_progress=on_progress,
                sink=sink,
                packaged_cache=_packaged_cache(),
            )
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        report = dict(prepared.report)
        if settings is not None:
            if sink is not None:
                info = sink.finish(prepared.sha256)
            else:
                path = prepared.path
                info = tokenize_version(
                    rows=lambda: _read(path, schema),
                    schema=schema,
                    version_sha256=prepared.sha256,
                    settings=settings,
                    cache_root=cache_root,
                    packaged_cache=_packaged_cache(),
                )
            report["tokenized"] = info.as_dict() | {
                "directory": artifacts.key_for(Path(info.directory))
            }
        key = dataset_prep.version_key(prepared.sha256)
        artifacts.commit_file(prepared.path, key)
    except Exception as exc:
        log.exception("preparing dataset version %s failed", version_id)
        if prepared is not None:
            prepared.path.unlink(missing_ok=True)
        with session_scope() as session:
            dataset_prep.fail(
                session=session, version_id=version_id, error=f"{type(exc).__name__}: {exc}"
            )
        return "failed"
    with session_scope() as session:
        dataset_prep.complete(
            session=session,
            version_id=version_id,
            sha256=prepared.sha256,
            storage_key=key,
            num_rows=prepared.num_rows,
            size_bytes=prepared.size_bytes,
            report=report,
        )
    return "ready"


@celery_app.task(name=PREPARE_TASK, acks_late=True, reject_on_worker_lost=True)
def prepare_dataset(version_id: int) -> str:
    """Celery entry point of `prepare` (queue cpu)."""
    return prepare(version_id)


def _write_json(key: str, payload: dict[str, Any]) -> None:
    fd, tmp = artifacts.temp_file(suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
    artifacts.commit_file(tmp, key)


def compute_model_view(payload: dict[str, Any]) -> str:
    """Render sample rows through the tokenizer and template; store the JSON artifact."""
    from app.db.models import DatasetVersion
    from workers.dataprep.fields import texts
    from workers.dataprep.preview import model_view
    from workers.dataprep.tokenize import load_tokenizer

    key = payload["key"]
    pending = artifacts.resolve(f"datasets/model-view/{key}.pending")
    try:
        settings = ModelViewSettings.model_validate(payload["settings"])
        with session_scope() as session:
            version = session.get(DatasetVersion, int(payload["version_id"]))
            if version is None:
                raise LookupError(f"dataset version {payload['version_id']} no longer exists")
            schema, storage_key = version.schema, version.storage_key
        path = artifacts.existing(storage_key)
        tokenizer = load_tokenizer(
            # The tokenizer a scratch model would train (on a bounded sample of the data).
            settings,  # type: ignore[arg-type]  # tokenizer, vocab_size, max_length alike
            lambda: (
                t
                for row in islice(_read(path, schema), SCRATCH_TOKENIZER_ROWS)
                for t in texts(row, "text" if schema == "txt" else schema)
            ),
            packaged_cache=_packaged_cache(),
        )
        result = model_view(
            tokenizer=tokenizer,
            rows=_read(path, schema),
            schema="text" if schema == "txt" else schema,
            max_length=settings.max_length,
            chat_template=settings.chat_template,
            detail_rows=settings.detail_rows,
            sample_rows=settings.sample_rows,
        )
        result["tokenizer"] = settings.tokenizer
        _write_json(dataset_prep.model_view_artifact(key), result)
        return "ready"
    except Exception as exc:
        log.exception("model view %s failed", key)
        _write_json(
            dataset_prep.model_view_error_artifact(key), {"error": f"{type(exc).__name__}: {exc}"}
        )
        return "failed"
    finally:
        pending.unlink(missing_ok=True)


@celery_app.task(name=MODEL_VIEW_TASK, acks_late=True, reject_on_worker_lost=True)
def model_view_task(payload: dict[str, Any]) -> str:
    """Celery entry point of `compute_model_view` (queue cpu)."""
    return compute_model_view(payload)
