"""Dataset preparation: a new immutable version from a parent and a recipe, prepared by the
`llmide.prepare_dataset` task; and the "model view" of a version, computed by
`llmide.model_view` and stored as a JSON artifact keyed by version and settings.

Web side: validate, record, send the task by name (never importing the worker library).
Worker side (`begin`, `progress`, `complete`, `fail`): the task's state transitions.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.errors import Conflict, ValidationFailed
from app.core.prep_recipe import ModelViewSettings, Recipe, recipe_errors
from app.db.models import DatasetVersion
from app.domain import lifecycle
from app.services import artifacts
from app.services.datasets import access
from app.services.datasets.versions import FAILED, PREPARING, READY
from app.services.workspaces.access import WorkspaceContext

# A progress write costs a commit; the bar moves in steps of at least this much.
PROGRESS_STEP = 0.02
MODEL_VIEW_STALE_S = 15 * 60


def parse_recipe(raw: Any) -> Recipe:
    """The recipe, or a 400 that names every problem ("steps.1.threshold: ...")."""
    try:
        return Recipe.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ValidationFailed(f"invalid recipe: {recipe_errors(exc)}", param="recipe") from None


def parse_model_view_settings(raw: Any) -> ModelViewSettings:
    try:
        return ModelViewSettings.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ValidationFailed(f"invalid settings: {recipe_errors(exc)}") from None


def create_version(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    parent_version_id: int,
    recipe: Recipe,
) -> DatasetVersion:
    """Record a `preparing` version and send the task; no task, no row (503 instead)."""
    parent = access.get_version_for_editor(
        session=session, ctx=ctx, dataset_id=dataset_id, version_id=parent_version_id
    )
    if parent.status != READY:
        raise Conflict(
            f"version {parent.version} is {parent.status}; only a ready version can be prepared"
        )
    if not recipe.steps and recipe.split is None and recipe.tokenize is None:
        raise ValidationFailed("the recipe has no steps, no split and no tokenization")
    version = record_generated_version(
        session=session,
        ctx=ctx,
        parent=parent,
        # A plain-text upload ("txt", one document per paragraph) is prepared into text rows.
        schema="text" if parent.schema == "txt" else parent.schema,
        recipe=recipe.model_dump(mode="json"),
    )
    session.commit()
    try:
        task_queue.enqueue_preparation(version.id)
    except Exception:
        session.delete(version)
        session.commit()
        raise
    return version


def record_generated_version(
    *,
    session: Session,
    ctx: WorkspaceContext,
    parent: DatasetVersion,
    schema: str,
    recipe: dict[str, Any],
) -> DatasetVersion:
    """A `preparing` child of `parent`, numbered next in its dataset, whose rows a task will
    write (the preparation task, or a batch's answers for the parent's prompts); flushed, not
    committed: the caller's unit of work commits."""
    number = (
        session.scalar(
            select(func.max(DatasetVersion.version)).where(
                DatasetVersion.dataset_id == parent.dataset_id
            )
        )
        or 0
    ) + 1
    version = DatasetVersion(
        workspace_id=ctx.workspace.id,
        dataset_id=parent.dataset_id,
        version=number,
        parent_id=parent.id,
        schema=schema,
        sha256="",
        storage_key="",
        num_rows=0,
        size_bytes=0,
        recipe=recipe,
        report={},
        status=PREPARING,
        progress=0.0,
        created_by_id=ctx.user.id,
    )
    session.add(version)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            "another version of this dataset was created at the same time; retry"
        ) from None
    return version


# --- worker side ----------------------------------------------------------------------------
def begin(*, session: Session, version_id: int) -> tuple[DatasetVersion, DatasetVersion] | None:
    """The version to prepare and its parent, or None when it is not (or no longer) preparing."""
    version = session.get(DatasetVersion, version_id)
    if version is None or version.status != PREPARING or version.parent_id is None:
        return None
    parent = session.get(DatasetVersion, version.parent_id)
    if parent is None:
        return None
    return version, parent


def progress(*, session: Session, version_id: int, fraction: float) -> None:
    session.execute(
        update(DatasetVersion)
        .where(DatasetVersion.id == version_id, DatasetVersion.status == PREPARING)
        .values(progress=max(0.0, min(fraction, 1.0)))
    )
    session.commit()


def complete(
    *,
    session: Session,
    version_id: int,
    sha256: str,
    storage_key: str,
    num_rows: int,
    size_bytes: int,
    report: dict[str, Any],
) -> None:
    session.execute(
        update(DatasetVersion)
        .where(DatasetVersion.id == version_id, DatasetVersion.status.in_(lifecycle.sources(READY)))
        .values(
            sha256=sha256,
            storage_key=storage_key,
            num_rows=num_rows,
            size_bytes=size_bytes,
            report=report,
            status=READY,
            progress=1.0,
            error=None,
        )
    )
    session.commit()


def fail(*, session: Session, version_id: int, error: str) -> None:
    """Mark the version failed with its reason, in the caller's unit of work (a worker's
    session_scope, or a request that ends a batch whose answers it was waiting for)."""
    session.execute(
        update(DatasetVersion)
        .where(
            DatasetVersion.id == version_id, DatasetVersion.status.in_(lifecycle.sources(FAILED))
        )
        .values(status=FAILED, error=error[:4000])
    )


def version_key(sha256: str) -> str:
    return f"datasets/versions/{sha256}.jsonl"


def tokenized_root_key() -> str:
    return "datasets/tokenized"


# --- model view -----------------------------------------------------------------------------
def model_view_key(version: DatasetVersion, settings: ModelViewSettings) -> str:
    payload = json.dumps(
        {"version": version.sha256, "schema": version.schema, "settings": settings.model_dump()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def model_view_artifact(key: str) -> str:
    return f"datasets/model-view/{key}.json"


def model_view_error_artifact(key: str) -> str:
    return f"datasets/model-view/{key}.error.json"


def model_view_state(version: DatasetVersion, settings: ModelViewSettings) -> dict[str, Any]:
    """{"status": ready|computing|failed|absent, "key", "result"|"error"}: reads artifacts only."""
    key = model_view_key(version, settings)
    # fetched(): the worker that rendered it may be on another host (docs/fleet.md).
    done = artifacts.fetched(model_view_artifact(key))
    if done is not None and done.is_file():
        return {"status": "ready", "key": key, "result": json.loads(done.read_text())}
    failed = artifacts.fetched(model_view_error_artifact(key))
    if failed is not None and failed.is_file():
        return {"status": "failed", "key": key, "error": json.loads(failed.read_text())["error"]}
    pending = artifacts.resolve(f"datasets/model-view/{key}.pending")
    # A marker older than this belongs to a task that died (a killed worker): ask again.
    fresh = pending.is_file() and time.time() - pending.stat().st_mtime < MODEL_VIEW_STALE_S
    return {"status": "computing" if fresh else "absent", "key": key}


def request_model_view(
    *, session: Session, ctx: WorkspaceContext, version: DatasetVersion, settings: ModelViewSettings
) -> dict[str, Any]:
    """The stored view if there is one; otherwise send the task (once) and answer computing."""
    if version.status != READY:
        raise Conflict(f"version {version.version} is {version.status}; wait until it is ready")
    state = model_view_state(version, settings)
    if state["status"] in ("ready", "computing"):
        return state
    key = state["key"]
    artifacts.delete(model_view_error_artifact(key))  # a retry
    marker = artifacts.resolve(f"datasets/model-view/{key}.pending")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    try:
        task_queue.enqueue_model_view(
            {"key": key, "version_id": version.id, "settings": settings.model_dump()}
        )
    except Exception:
        marker.unlink(missing_ok=True)
        raise
    return {"status": "computing", "key": key}
