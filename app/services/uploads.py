"""Chunked, resumable uploads: big files arrive in pieces appended to a file in the artifact
store; the server's `received` offset is the truth a dropped client resumes from. Completing
an upload ingests the file exactly like a one-request upload."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import ChunkedUpload, ModelVersion, Role, UploadStatus
from app.domain import lifecycle
from app.services import artifacts
from app.services.datasets import formats, ingest
from app.services.datasets import intake as dataset_intake
from app.services.registry import import_checks
from app.services.registry import imports as model_import
from app.services.workspaces.access import WorkspaceContext, get_in_workspace

OPEN = UploadStatus.open
COMPLETED = UploadStatus.completed
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _key(upload_id: int) -> str:
    return f"uploads/{int(upload_id)}.part"


def cleanup_stale(*, session: Session) -> int:
    """Delete uploads untouched for `chunked_upload_max_age_s`, with their partial files."""
    cutoff = utcnow() - timedelta(seconds=get_settings().chunked_upload_max_age_s)
    stale = list(
        session.scalars(
            select(ChunkedUpload).where(
                ChunkedUpload.status == OPEN, ChunkedUpload.updated_at < cutoff
            )
        )
    )
    for upload in stale:
        artifacts.delete(upload.storage_key)
        session.delete(upload)
    session.flush()
    return len(stale)


def create(
    *,
    session: Session,
    ctx: WorkspaceContext,
    filename: str,
    total_size: int,
    purpose: str = "dataset",
) -> ChunkedUpload:
    """Open a chunked upload. `purpose` "model": a model import (.zip of a Hugging Face folder
    or .gguf, up to LLMIDE_MAX_MODEL_IMPORT_BYTES), completed by `complete_model`."""
    ctx.require(Role.editor)
    clean = dataset_intake.clean_filename(filename)
    if purpose == "model":
        import_checks.check_upload_name(clean)  # refuse pickles and other types before any byte
        limit = get_settings().max_model_import_bytes
        setting, what = "LLMIDE_MAX_MODEL_IMPORT_BYTES", "model import"
    else:
        formats.source_format(clean)  # refuse an unsupported type before any byte is sent
        limit = get_settings().max_dataset_bytes
        setting, what = "LLMIDE_MAX_DATASET_BYTES", "dataset"
    if total_size > limit:
        raise PayloadTooLarge(
            f"the file is larger than the {what} size limit of {limit / (1024 * 1024):g} MB "
            f"({setting})",
            param="total_size",
        )
    cleanup_stale(session=session)
    upload = ChunkedUpload(
        workspace_id=ctx.workspace.id,
        user_id=ctx.user.id,
        filename=clean,
        total_size=total_size,
        received=0,
        storage_key="uploads/pending",
        status=OPEN,
    )
    session.add(upload)
    session.flush()
    upload.storage_key = _key(upload.id)
    path = artifacts.resolve(upload.storage_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    session.flush()
    return upload


def get_for_user(*, session: Session, ctx: WorkspaceContext, upload_id: int) -> ChunkedUpload:
    """An upload belongs to its workspace and to the user who started it (others: 404)."""
    upload = get_in_workspace(
        session=session, ctx=ctx, model=ChunkedUpload, row_id=upload_id, what="upload"
    )
    if upload.user_id != ctx.user.id:
        raise NotFound(f"upload {upload_id} not found")
    return upload


def chunk_offset(*, content_range: str | None, offset: int | None, length: int) -> int:
    """Where a chunk goes: the `offset` parameter or a `Content-Range: bytes a-b/total`."""
    if content_range:
        match = _RANGE_RE.match(content_range.strip())
        if not match:
            raise ValidationFailed(
                "Content-Range must look like 'bytes 0-1048575/5000000'", param="Content-Range"
            )
        start, end = int(match.group(1)), int(match.group(2))
        if end - start + 1 != length:
            raise ValidationFailed(
                f"Content-Range says {end - start + 1} bytes but the body has {length}",
                param="Content-Range",
            )
        if offset is not None and offset != start:
            raise ValidationFailed("offset and Content-Range disagree", param="offset")
        return start
    if offset is None:
        raise ValidationFailed("send the chunk's offset (or a Content-Range)", param="offset")
    return offset


def append(
    *,
    session: Session,
    ctx: WorkspaceContext,
    upload_id: int,
    offset: int,
    body: IO[bytes],
    length: int,
) -> ChunkedUpload:
    """Write a chunk at `offset`, which must be the received count (so a retried or
    out-of-order chunk is refused with the offset to resume from, never written twice)."""
    upload = get_for_user(session=session, ctx=ctx, upload_id=upload_id)
    ctx.require(Role.editor)
    session.refresh(upload, with_for_update=not get_settings().is_sqlite)
    if upload.status != OPEN:
        raise Conflict(f"upload {upload_id} is already {upload.status}")
    if offset != upload.received:
        raise Conflict(
            f"upload {upload_id} has received {upload.received} bytes: send the chunk at "
            f"offset {upload.received}, not {offset}",
            param="offset",
        )
    if offset + length > upload.total_size:
        raise ValidationFailed(
            f"the chunk ends at byte {offset + length}, past the announced size "
            f"{upload.total_size}",
            param="Content-Range",
        )
    path = artifacts.existing(upload.storage_key)
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.truncate(offset)  # bytes past `received` are a dropped chunk's remains
        written = 0
        while chunk := body.read(1 << 20):
            handle.write(chunk)
            written += len(chunk)
    upload.received = offset + written
    upload.updated_at = utcnow()
    session.flush()
    return upload


def _received(
    *, session: Session, ctx: WorkspaceContext, upload_id: int
) -> tuple[ChunkedUpload, Path]:
    """The open upload whose every byte has arrived, and its file: what both ways of
    completing an upload (dataset or model) start from."""
    upload = get_for_user(session=session, ctx=ctx, upload_id=upload_id)
    ctx.require(Role.editor)
    if upload.status != OPEN:
        raise Conflict(f"upload {upload_id} is already {upload.status}")
    if upload.received != upload.total_size:
        raise Conflict(
            f"upload {upload_id} has received {upload.received} of {upload.total_size} bytes; "
            "send the rest first"
        )
    return upload, artifacts.existing(upload.storage_key)


def complete(
    *,
    session: Session,
    ctx: WorkspaceContext,
    upload_id: int,
    name: str | None,
    options: ingest.IngestOptions,
) -> dataset_intake.UploadOutcome:
    """Ingest the received file like a normal upload. A refused file keeps the upload open,
    so it can be completed again with other options (say on_error=keep_valid)."""
    upload, path = _received(session=session, ctx=ctx, upload_id=upload_id)
    outcome = dataset_intake.ingest_file(
        session=session,
        ctx=ctx,
        path=path,
        sha256=dataset_intake.file_sha256(path),
        filename=upload.filename,
        name=name,
        options=options,
    )
    lifecycle.transition(upload, COMPLETED)
    upload.dataset_id = outcome.dataset.id
    upload.updated_at = utcnow()
    session.flush()
    artifacts.delete(upload.storage_key)  # moved into the store already, unless a duplicate
    return outcome


def complete_model(
    *, session: Session, ctx: WorkspaceContext, upload_id: int, name: str
) -> ModelVersion:
    """Import the received file as a model version (checked like a one-request import: no
    pickles, safe archive paths, real weights). A refused file keeps the upload open (the
    client aborts it, or the stale-upload sweep removes it)."""
    upload, path = _received(session=session, ctx=ctx, upload_id=upload_id)
    version = model_import.import_received(
        session=session, ctx=ctx, name=name, path=path, filename=upload.filename
    )
    lifecycle.transition(upload, COMPLETED)
    upload.updated_at = utcnow()
    session.flush()
    artifacts.delete(upload.storage_key)
    return version


def abort(*, session: Session, ctx: WorkspaceContext, upload_id: int) -> None:
    upload = get_for_user(session=session, ctx=ctx, upload_id=upload_id)
    ctx.require(Role.editor)
    artifacts.delete(upload.storage_key)
    session.delete(upload)
    session.flush()
