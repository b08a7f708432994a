"""Chunked, resumable uploads: start, send chunks, ask how much arrived, complete, abort."""

from __future__ import annotations

import tempfile
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, Workspace
from app.api.routes.datasets import SchemaName, detail
from app.api.schemas.datasets import DatasetDetail
from app.api.schemas.registry import ModelVersionRead
from app.api.schemas.uploads import UploadCreate, UploadModelImport, UploadRead
from app.services import uploads
from app.services.datasets import intake as dataset_intake

router = APIRouter(prefix="/api/v1/uploads", tags=["uploads"])


@router.post("", response_model=UploadRead, status_code=status.HTTP_201_CREATED)
def start_upload(body: UploadCreate, session: SessionDep, ctx: Workspace) -> UploadRead:
    upload = uploads.create(
        session=session,
        ctx=ctx,
        filename=body.filename,
        total_size=body.total_size,
        purpose=body.purpose,
    )
    return UploadRead.model_validate(upload)


@router.get("/{upload_id}", response_model=UploadRead)
def read_upload(upload_id: int, session: SessionDep, ctx: Workspace) -> UploadRead:
    """`received` is the offset to resume from after a dropped connection."""
    return UploadRead.model_validate(
        uploads.get_for_user(session=session, ctx=ctx, upload_id=upload_id)
    )


@router.put("/{upload_id}", response_model=UploadRead)
async def send_chunk(
    upload_id: int,
    request: Request,
    session: SessionDep,
    ctx: Workspace,
    offset: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    content_range: Annotated[str | None, Header(max_length=100)] = None,
) -> UploadRead:
    """The raw body is the chunk; it is spooled (to disk past 1 MB) before the file is
    touched, so a connection dropped mid-chunk changes nothing."""
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        length = 0
        async for piece in request.stream():
            spool.write(piece)
            length += len(piece)
        spool.seek(0)
        start = uploads.chunk_offset(content_range=content_range, offset=offset, length=length)

        def write() -> UploadRead:
            upload = uploads.append(
                session=session,
                ctx=ctx,
                upload_id=upload_id,
                offset=start,
                body=spool,
                length=length,
            )
            return UploadRead.model_validate(upload)

        return await run_in_threadpool(write)


@router.post("/{upload_id}/complete", response_model=DatasetDetail, status_code=201)
def complete_upload(
    upload_id: int,
    session: SessionDep,
    ctx: Workspace,
    response: Response,
    name: Annotated[str | None, Form(max_length=255)] = None,
    schema_name: Annotated[SchemaName | None, Form(alias="schema")] = None,
    column_map: Annotated[str | None, Form(max_length=4000)] = None,
    on_error: Annotated[Literal["reject", "keep_valid"], Form()] = "reject",
    text_split: Annotated[Literal["blocks", "lines", "file"], Form()] = "blocks",
) -> DatasetDetail:
    options = dataset_intake.parse_options(
        schema=schema_name, column_map=column_map, on_error=on_error, text_split=text_split
    )
    outcome = uploads.complete(
        session=session, ctx=ctx, upload_id=upload_id, name=name, options=options
    )
    if outcome.duplicate:
        response.status_code = status.HTTP_200_OK
    return detail(session, outcome.dataset, duplicate=outcome.duplicate)


@router.post("/{upload_id}/import-model", response_model=ModelVersionRead, status_code=201)
def import_model_upload(
    upload_id: int, body: UploadModelImport, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    """Import a completed chunked upload (purpose "model") as a new model version: how a
    model larger than one request (say a 513 MB SmolLM2 version) is imported."""
    version = uploads.complete_model(session=session, ctx=ctx, upload_id=upload_id, name=body.name)
    return ModelVersionRead.model_validate(version)


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
def abort_upload(upload_id: int, session: SessionDep, ctx: Workspace) -> None:
    uploads.abort(session=session, ctx=ctx, upload_id=upload_id)
