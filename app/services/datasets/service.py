"""Datasets: uploads ingested to canonical JSONL (versions), scoped to a workspace."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core import safe_json
from app.core.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.core.settings import get_settings
from app.db.models import ChunkedUpload, Dataset, DatasetVersion, Role, Run
from app.services import artifacts, audit, workspaces
from app.services.datasets import access, detection, formats, ingest, readers, stats
from app.services.workspaces import WorkspaceContext


def clean_filename(filename: str | None) -> str:
    # Only the last path component is kept, for display: stored files are named by hashes.
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip().replace("\x00", "")
    if not name:
        raise ValidationFailed("the upload has no file name", param="file")
    return name[:255]


@dataclass
class UploadOutcome:
    dataset: Dataset
    duplicate: bool  # the same bytes were already uploaded to this workspace: nothing new stored


def _limits() -> readers.Limits:
    settings = get_settings()
    return readers.Limits(
        max_line_bytes=settings.max_line_bytes,
        max_rows=settings.max_dataset_rows,
        max_decompressed_bytes=settings.max_dataset_bytes,
        max_document_bytes=settings.max_document_bytes,
    )


def _copy_hashed(stream: IO[bytes], sink: IO[bytes], max_bytes: int, limit_name: str) -> str:
    digest = hashlib.sha256()
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than the upload limit of {max_bytes / (1024 * 1024):g} MB "
                f"({limit_name})"
            )
        digest.update(chunk)
        sink.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def find_duplicate(*, session: Session, ctx: WorkspaceContext, sha256: str) -> Dataset | None:
    return session.scalars(
        select(Dataset)
        .where(Dataset.workspace_id == ctx.workspace.id, Dataset.sha256 == sha256)
        .order_by(Dataset.id)
        .limit(1)
    ).first()


def ingest_upload(
    *,
    session: Session,
    ctx: WorkspaceContext,
    stream: IO[bytes],
    filename: str | None,
    name: str | None = None,
    purpose: str = "fine-tune",
    options: ingest.IngestOptions | None = None,
    reuse_duplicate: bool = True,
) -> UploadOutcome:
    """Store the upload's bytes in a temporary file (hashed, size-checked), then ingest it."""
    ctx.require(Role.editor)
    filename = clean_filename(filename)
    formats.source_format(filename)  # an unsupported type is refused before reading the body
    fd, tmp = artifacts.temp_file()
    try:
        with os.fdopen(fd, "wb") as sink:
            sha256 = _copy_hashed(
                stream, sink, get_settings().max_upload_bytes, "LLMIDE_MAX_UPLOAD_BYTES"
            )
        return ingest_file(
            session=session,
            ctx=ctx,
            path=tmp,
            sha256=sha256,
            filename=filename,
            name=name,
            purpose=purpose,
            options=options,
            reuse_duplicate=reuse_duplicate,
        )
    finally:
        tmp.unlink(missing_ok=True)


def ingest_file(
    *,
    session: Session,
    ctx: WorkspaceContext,
    path: Path,
    sha256: str,
    filename: str,
    name: str | None = None,
    purpose: str = "fine-tune",
    options: ingest.IngestOptions | None = None,
    reuse_duplicate: bool = True,
) -> UploadOutcome:
    """Ingest a received file (`path` is consumed: moved into the store as the original).

    Same bytes already in the workspace: the existing dataset is the answer, unless
    `reuse_duplicate` is False (OpenAI's files: every upload is its own object with its own
    filename); then a new dataset is recorded that shares the stored files, which deletion
    keeps while another dataset still refers to them. Otherwise the canonical file, the
    original and (with keep_valid) the rejected rows are stored and the dataset is recorded
    with its version 1, in the caller's transaction.
    """
    ctx.require(Role.editor)
    filename = clean_filename(filename)
    existing = find_duplicate(session=session, ctx=ctx, sha256=sha256) if reuse_duplicate else None
    if existing is not None:
        return UploadOutcome(existing, duplicate=True)
    options = options or ingest.IngestOptions()
    settings = get_settings()
    fmt, compressed = formats.source_format(filename)
    fd_c, tmp_canonical = artifacts.temp_file(".jsonl")
    fd_r, tmp_rejected = artifacts.temp_file(".jsonl")
    try:
        with os.fdopen(fd_c, "wb") as canonical, os.fdopen(fd_r, "wb") as rejected:
            result = ingest.ingest(
                path=path,
                filename=filename,
                options=options,
                limits=_limits(),
                canonical=canonical,
                rejected=rejected,
                max_problems_listed=settings.upload_problems_listed,
            )
        # Identical uploads at once all found no duplicate above (the ingest takes a while):
        # check again under the workspace's lock, so the later ones wait for the first one's
        # commit and answer its dataset, like a duplicate uploaded afterwards.
        workspaces.lock(session=session, ctx=ctx)
        existing = find_duplicate(session=session, ctx=ctx, sha256=sha256)
        if existing is not None and reuse_duplicate:
            return UploadOutcome(existing, duplicate=True)
        canonical_key = f"datasets/versions/{result.sha256}.jsonl"
        original_key = f"datasets/originals/{sha256}.{fmt}{'.gz' if compressed else ''}"
        artifacts.commit_file(tmp_canonical, canonical_key)
        artifacts.commit_file(path, original_key)
        size_bytes = artifacts.resolve(original_key).stat().st_size
        dataset = Dataset(
            workspace_id=ctx.workspace.id,
            name=(name or filename).strip()[:255] or filename,
            filename=filename,
            format=result.schema,
            purpose=purpose,
            sha256=sha256,
            size_bytes=size_bytes,
            num_rows=result.num_rows,
            storage_key=canonical_key,
            created_by_id=ctx.user.id,
        )
        session.add(dataset)
        session.flush()
        rejected_key = None
        if result.problems_count:
            rejected_key = f"datasets/rejected/{dataset.id}.jsonl"
            artifacts.commit_file(tmp_rejected, rejected_key)
        report = {
            "upload": {
                "filename": filename,
                "format": result.source_format,
                "compressed": result.compressed,
                "original_key": original_key,
                "original_sha256": sha256,
                "original_size_bytes": size_bytes,
                "on_error": options.on_error,
                "text_split": options.text_split if fmt == "txt" else None,
                "rejected_key": rejected_key,
                "rejected_rows": result.problems_count,
            },
            "detection": result.detection,
            "problems": [str(p) for p in result.problems],
            "stats": result.stats,
        }
        session.add(
            DatasetVersion(
                workspace_id=ctx.workspace.id,
                dataset_id=dataset.id,
                version=1,
                schema=result.schema,
                sha256=result.sha256,
                storage_key=canonical_key,
                num_rows=result.num_rows,
                size_bytes=result.size_bytes,
                recipe={},
                report=report,
                status="ready",
                progress=1.0,
                created_by_id=ctx.user.id,
            )
        )
        session.flush()
        audit.record(
            session=session,
            actor=ctx,
            action="dataset.upload",
            target_type="dataset",
            target_id=dataset.id,
            detail={"name": dataset.name, "rows": dataset.num_rows, "bytes": size_bytes},
        )
        return UploadOutcome(dataset, duplicate=False)
    finally:
        tmp_canonical.unlink(missing_ok=True)
        tmp_rejected.unlink(missing_ok=True)


def create_from_upload(
    *,
    session: Session,
    ctx: WorkspaceContext,
    stream: IO[bytes],
    filename: str | None,
    name: str | None = None,
    purpose: str = "fine-tune",
    options: ingest.IngestOptions | None = None,
    reuse_duplicate: bool = True,
) -> Dataset:
    """The uploaded dataset (or the existing one for a duplicate upload, if reused)."""
    return ingest_upload(
        session=session,
        ctx=ctx,
        stream=stream,
        filename=filename,
        name=name,
        purpose=purpose,
        options=options,
        reuse_duplicate=reuse_duplicate,
    ).dataset


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


def parse_options(
    *,
    schema: str | None = None,
    column_map: str | dict[str, str] | None = None,
    on_error: str = "reject",
    text_split: str = "blocks",
) -> ingest.IngestOptions:
    """Upload options from form fields; `column_map` is a JSON object canonical key -> column."""
    mapping: Any = column_map or {}
    if isinstance(mapping, str):
        try:
            mapping = safe_json.loads(mapping) if mapping.strip() else {}
        except (json.JSONDecodeError, safe_json.JSONRefused):
            raise ValidationFailed(
                'column_map must be a JSON object like {"prompt": "question"}', param="column_map"
            ) from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
    ):
        raise ValidationFailed(
            'column_map must be a JSON object of strings like {"prompt": "question"}',
            param="column_map",
        )
    if mapping and schema is None:
        matching = [name for name, keys in detection.SCHEMAS.items() if set(mapping) <= set(keys)]
        if not matching:
            raise ValidationFailed(
                f"column_map keys {', '.join(sorted(mapping))} fit no schema", param="column_map"
            )
    return ingest.IngestOptions(
        schema=schema or None,
        column_map=dict(mapping),
        on_error=on_error,
        text_split=text_split,
    )


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
