"""Datasets of a workspace: list, preview, the stored files (download), delete. How an upload
becomes a dataset is `intake`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound
from app.db.models import ChunkedUpload, Dataset, DatasetVersion, Run
from app.services import artifacts
from app.services.datasets import access, stats
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext


def first_version(*, session: Session, dataset: Dataset) -> DatasetVersion | None:
    return session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.version)
        .limit(1)
    ).first()


def rejected_rows(*, session: Session, dataset: Dataset) -> int:
    """Rows kept apart at upload (on_error=keep_valid)."""
    version = first_version(session=session, dataset=dataset)
    upload = (version.report or {}).get("upload", {}) if version is not None else {}
    return int(upload.get("rejected_rows") or 0)


def original_key(*, session: Session, dataset: Dataset) -> str:
    """The uploaded bytes as they came (datasets from before versions: the stored file)."""
    version = first_version(session=session, dataset=dataset)
    upload = (version.report or {}).get("upload", {}) if version is not None else {}
    return str(upload.get("original_key") or dataset.storage_key)


def list_for_workspace(
    *, session: Session, ctx: WorkspaceContext, limit: int = 100, offset: int = 0
) -> list[Dataset]:
    return list(
        session.scalars(
            select(Dataset)
            .where(Dataset.workspace_id == ctx.workspace.id)
            .order_by(Dataset.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )


def count_for_workspace(*, session: Session, ctx: WorkspaceContext) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Dataset)
            .where(Dataset.workspace_id == ctx.workspace.id)
        )
        or 0
    )


def names_for(*, session: Session, ctx: WorkspaceContext, ids: set[int]) -> dict[int, str]:
    """Names of the workspace's datasets among `ids` (what a page links to, not every one)."""
    if not ids:
        return {}
    rows = session.execute(
        select(Dataset.id, Dataset.name).where(
            Dataset.workspace_id == ctx.workspace.id, Dataset.id.in_(ids)
        )
    )
    return {dataset_id: name for dataset_id, name in rows}


def page_for_workspace(
    *,
    session: Session,
    ctx: WorkspaceContext,
    after_id: int | None = None,
    limit: int = 100,
    ascending: bool = False,
    purpose: str | None = None,
) -> list[Dataset]:
    """A keyset page in id order, starting after `after_id` (the OpenAI facade's cursors)."""
    query = select(Dataset).where(Dataset.workspace_id == ctx.workspace.id)
    if purpose is not None:
        query = query.where(Dataset.purpose == purpose)
    if after_id is not None:
        query = query.where(Dataset.id > after_id if ascending else Dataset.id < after_id)
    order = Dataset.id.asc() if ascending else Dataset.id.desc()
    return list(session.scalars(query.order_by(order).limit(limit)))


PREVIEW_ROWS = 5


def _rows_of(key: str, fmt: str) -> Iterator[dict[str, Any]]:
    with artifacts.existing(key).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield {"text": line.rstrip("\n")} if fmt == "txt" else json.loads(line)


def preview(*, dataset: Dataset, rows: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    return list(islice(_rows_of(dataset.storage_key, dataset.format), rows))


@dataclass
class PreviewPage:
    items: list[dict[str, Any]]  # {"row": number (1-based), "data": canonical row}
    offset: int
    limit: int
    has_more: bool
    query: str | None


def preview_page(
    *, version: DatasetVersion, offset: int = 0, limit: int = 20, query: str | None = None
) -> PreviewPage:
    """A page of a version's rows, optionally only those whose text contains `query`
    (case-folded substring match on characters: works for Chinese, no word splitting).
    Streams the file; memory holds one page."""
    if version.status != "ready" or not version.storage_key:
        raise Conflict(f"dataset version {version.id} is {version.status}: no rows to show yet")
    needle = (query or "").strip().casefold() or None
    items: list[dict[str, Any]] = []
    matched = 0
    has_more = False
    for number, row in enumerate(_rows_of(version.storage_key, version.schema), start=1):
        if needle is not None and needle not in stats.row_text(row).casefold():
            continue
        matched += 1
        if matched <= offset:
            continue
        if len(items) == limit:
            has_more = True
            break
        items.append({"row": number, "data": row})
    return PreviewPage(items, offset, limit, has_more, query)


def runs_using(*, session: Session, dataset: Dataset) -> list[Run]:
    version_ids = select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id)
    return list(
        session.scalars(
            select(Run)
            .where(
                or_(
                    Run.dataset_id == dataset.id,
                    Run.validation_dataset_id == dataset.id,
                    Run.dataset_version_id.in_(version_ids),
                )
            )
            .order_by(Run.id)
        )
    )


def _referenced_elsewhere(session: Session, key: str, dataset: Dataset) -> bool:
    others = session.scalar(
        select(func.count())
        .select_from(DatasetVersion)
        .where(DatasetVersion.storage_key == key, DatasetVersion.dataset_id != dataset.id)
    ) or session.scalar(
        select(func.count())
        .select_from(Dataset)
        .where(Dataset.storage_key == key, Dataset.id != dataset.id)
    )
    return bool(others)


def delete(*, session: Session, ctx: WorkspaceContext, dataset_id: int) -> None:
    """Delete a dataset, its versions and the files no other dataset shares; refused (409,
    naming them) while a run uses the dataset or one of its versions."""
    dataset = access.get_for_editor(session=session, ctx=ctx, dataset_id=dataset_id)
    users = runs_using(session=session, dataset=dataset)
    if users:
        named = ", ".join(f"run {r.id} ({r.name})" for r in users[:10])
        more = f" and {len(users) - 10} more" if len(users) > 10 else ""
        raise Conflict(f"dataset {dataset_id} is used by {named}{more}; delete those runs first")
    versions = list(
        session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))
    )
    keys = {dataset.storage_key} | {v.storage_key for v in versions if v.storage_key}
    extra: list[str] = []
    for version in versions:
        upload = (version.report or {}).get("upload") or {}
        if upload.get("rejected_key"):
            extra.append(upload["rejected_key"])
        if upload.get("original_key"):
            same_bytes = session.scalar(
                select(func.count())
                .select_from(Dataset)
                .where(Dataset.sha256 == dataset.sha256, Dataset.id != dataset.id)
            )
            if not same_bytes:
                extra.append(upload["original_key"])
    shared = {key for key in keys if _referenced_elsewhere(session, key, dataset)}
    session.execute(
        update(ChunkedUpload).where(ChunkedUpload.dataset_id == dataset.id).values(dataset_id=None)
    )
    session.execute(
        update(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id).values(parent_id=None)
    )
    session.execute(sa_delete(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))
    session.delete(dataset)
    audit.record(
        session=session,
        actor=ctx,
        action="dataset.delete",
        target_type="dataset",
        target_id=dataset.id,
        detail={"name": dataset.name},
    )
    session.flush()
    for key in (keys - shared) | set(extra):
        artifacts.delete(key)


def download_target(
    *, session: Session, dataset: Dataset, version: DatasetVersion, kind: str
) -> tuple[Path, str, str]:
    """(path, download file name, media type) of one of a dataset's stored files."""
    stem = dataset.filename.rsplit(".", 2 if dataset.filename.endswith(".gz") else 1)[0] or "data"
    if kind == "original":
        key = original_key(session=session, dataset=dataset)
        return artifacts.existing(key), dataset.filename, "application/octet-stream"
    if kind == "rejected":
        first = first_version(session=session, dataset=dataset)
        upload = ((first.report or {}).get("upload") or {}) if first is not None else {}
        if not upload.get("rejected_key"):
            raise NotFound(f"dataset {dataset.id} has no rejected rows")
        return (
            artifacts.existing(upload["rejected_key"]),
            f"{stem}.rejected.jsonl",
            "application/x-ndjson",
        )
    if version.status != "ready" or not version.storage_key:
        raise Conflict(f"dataset version {version.id} is {version.status}: nothing to download")
    return (
        artifacts.existing(version.storage_key),
        f"{stem}.v{version.version}.jsonl",
        "application/x-ndjson",
    )
