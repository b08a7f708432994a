"""An uploaded file becomes a dataset: the bytes hashed and size-checked, a duplicate of an
earlier upload answered by that dataset, otherwise the file ingested (`ingest`) and stored as
the dataset's original, its canonical version 1 and (with keep_valid) its rejected rows."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import safe_json
from app.core.errors import PayloadTooLarge, ValidationFailed
from app.core.settings import get_settings
from app.db.models import Dataset, DatasetVersion, Role
from app.services import artifacts
from app.services.datasets import detection, formats, ingest, readers
from app.services.workspaces import access as workspace_access
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext


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
        workspace_access.lock(session=session, ctx=ctx)
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
