"""Datasets: validated uploads stored by content hash, scoped to a workspace."""

from __future__ import annotations

import json
import os
from itertools import islice
from typing import IO, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, ValidationFailed
from app.core.settings import get_settings
from app.db.models import Dataset, DatasetVersion, Role, Run
from app.services import artifacts
from app.services.dataset_validation import PREVIEW_ROWS, validate_stream
from app.services.workspaces import WorkspaceContext, get_in_workspace

_EXTENSION = {"txt": "txt", "text": "jsonl", "chat": "jsonl"}


def _clean_filename(filename: str | None) -> str:
    # Only the last path component is kept, for display: the stored file is named by its hash.
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip().replace("\x00", "")
    if not name:
        raise ValidationFailed("the upload has no file name", param="file")
    return name[:255]


def create_from_upload(
    *,
    session: Session,
    ctx: WorkspaceContext,
    stream: IO[bytes],
    filename: str | None,
    name: str | None = None,
    purpose: str = "fine-tune",
) -> Dataset:
    """Validate while streaming to a temporary file; store and record only a valid file."""
    ctx.require(Role.editor)
    filename = _clean_filename(filename)
    settings = get_settings()
    fd, tmp = artifacts.temp_file()
    try:
        with os.fdopen(fd, "wb") as sink:
            report = validate_stream(
                stream,
                filename=filename,
                sink=sink,
                max_bytes=settings.max_upload_bytes,
                max_line_bytes=settings.max_line_bytes,
            )
        key = f"datasets/{report.sha256}.{_EXTENSION[report.format]}"
        artifacts.commit_file(tmp, key)
    finally:
        tmp.unlink(missing_ok=True)
    dataset = Dataset(
        workspace_id=ctx.workspace.id,
        name=(name or filename).strip()[:255] or filename,
        filename=filename,
        format=report.format,
        purpose=purpose,
        sha256=report.sha256,
        size_bytes=report.size_bytes,
        num_rows=report.num_rows,
        storage_key=key,
        created_by_id=ctx.user.id,
    )
    session.add(dataset)
    session.flush()
    session.add(
        DatasetVersion(
            workspace_id=ctx.workspace.id,
            dataset_id=dataset.id,
            version=1,
            schema=report.format,
            sha256=report.sha256,
            storage_key=key,
            num_rows=report.num_rows,
            size_bytes=report.size_bytes,
            recipe={},
            report={},
            status="ready",
            progress=1.0,
            created_by_id=ctx.user.id,
        )
    )
    session.flush()
    return dataset


def get_for_member(*, session: Session, ctx: WorkspaceContext, dataset_id: int) -> Dataset:
    return get_in_workspace(
        session=session, ctx=ctx, model=Dataset, row_id=dataset_id, what="dataset"
    )


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


def preview(*, dataset: Dataset, rows: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    path = artifacts.existing(dataset.storage_key)
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in islice((ln for ln in handle if ln.strip()), rows):
            out.append({"text": line.rstrip("\n")} if dataset.format == "txt" else json.loads(line))
    return out


def delete(*, session: Session, ctx: WorkspaceContext, dataset_id: int) -> None:
    ctx.require(Role.editor)
    dataset = get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    in_use = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(or_(Run.dataset_id == dataset.id, Run.validation_dataset_id == dataset.id))
    )
    if in_use:
        raise Conflict(f"dataset {dataset_id} is used by {in_use} run(s); delete those runs first")
    shared = session.scalar(
        select(func.count())
        .select_from(Dataset)
        .where(Dataset.storage_key == dataset.storage_key, Dataset.id != dataset.id)
    )
    session.delete(dataset)
    session.flush()
    if not shared:
        artifacts.delete(dataset.storage_key)
