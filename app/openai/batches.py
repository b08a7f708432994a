"""OpenAI `batches`: requests of a `purpose: batch` file, run by a `cpu` worker through the
same route code and inference server as live requests (app/openai/batch_runner.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, Workspace
from app.core.errors import NotFound, ValidationFailed
from app.db.models import Batch
from app.openai.common import parse_id, parse_number, unix, unix_or_none
from app.openai.files import RAW_PREFIX, raw_file_id
from app.openai.schemas import (
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchList,
    BatchObject,
    BatchRequestCounts,
)
from app.services import batches

router = APIRouter(prefix="/v1/batches", tags=["openai: batches"])

BATCH_PREFIX = "batch_"


def batch_id(number: int) -> str:
    return f"{BATCH_PREFIX}{number}"


def to_batch(batch: Batch) -> BatchObject:
    return BatchObject(
        id=batch_id(batch.id),
        endpoint=batch.endpoint,
        errors=BatchErrors(data=[BatchError(**e) for e in batch.errors]) if batch.errors else None,
        input_file_id=raw_file_id(batch.input_file_id) if batch.input_file_id else "",
        completion_window=batch.completion_window,
        status=batch.status,  # type: ignore[arg-type]
        output_file_id=raw_file_id(batch.output_file_id) if batch.output_file_id else None,
        error_file_id=raw_file_id(batch.error_file_id) if batch.error_file_id else None,
        created_at=unix(batch.created_at),
        in_progress_at=unix_or_none(batch.in_progress_at),
        expires_at=unix_or_none(batch.expires_at),
        finalizing_at=unix_or_none(batch.finalizing_at),
        completed_at=unix_or_none(batch.completed_at),
        failed_at=unix_or_none(batch.failed_at),
        expired_at=unix_or_none(batch.expired_at),
        cancelling_at=unix_or_none(batch.cancelling_at),
        cancelled_at=unix_or_none(batch.cancelled_at),
        request_counts=BatchRequestCounts(
            total=batch.total, completed=batch.completed, failed=batch.failed
        ),
        metadata=batch.batch_metadata,
    )


def _batch(session: SessionDep, ctx: Workspace, value: str) -> Batch:
    number = parse_id(value, BATCH_PREFIX, noun="batch")
    try:
        return batches.get(session=session, ctx=ctx, batch_id=number)
    except NotFound:
        raise NotFound(f"no such batch: {value!r}") from None


@router.post("", response_model=BatchObject)
def create_batch(body: BatchCreate, session: SessionDep, ctx: Workspace) -> BatchObject:
    number = parse_number(body.input_file_id, RAW_PREFIX)
    if number is None:
        raise NotFound(
            f"no such batch input file: {body.input_file_id!r} (upload it with purpose 'batch')",
            param="input_file_id",
        )
    batch = batches.create(
        session=session,
        ctx=ctx,
        input_file_id=number,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
    )
    return to_batch(batch)


@router.get("", response_model=BatchList)
def list_batches(
    session: SessionDep,
    ctx: Workspace,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    before = None
    if after is not None:
        before = parse_number(after, BATCH_PREFIX)
        if before is None:
            raise ValidationFailed(f"after: {after!r} is not a batch id", param="after")
    rows = batches.page(session=session, ctx=ctx, before_id=before, limit=limit + 1)
    data = [to_batch(b) for b in rows[:limit]]
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


@router.get("/{batch}", response_model=BatchObject)
def retrieve_batch(batch: str, session: SessionDep, ctx: Workspace) -> BatchObject:
    return to_batch(_batch(session, ctx, batch))


@router.post("/{batch}/cancel", response_model=BatchObject)
def cancel_batch(batch: str, session: SessionDep, ctx: Workspace) -> BatchObject:
    found = _batch(session, ctx, batch)
    return to_batch(batches.cancel(session=session, ctx=ctx, batch_id=found.id))
