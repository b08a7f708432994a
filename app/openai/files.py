"""OpenAI `files`: training files, which are this server's datasets (`file-<dataset id>`),
batch input, output and error files kept as they are (`file-raw-<id>`, services.batches), and
a finished fine-tuning job's step-metrics CSV (`file-results-<run id>`, made on request)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, Workspace
from app.core.errors import NotFound, ValidationFailed
from app.db.models import Dataset, Run, RunStatus, StoredFile
from app.openai.common import FILE_PREFIX, parse_id, parse_number, unix
from app.openai.schemas import FileDeleted, FileList, FileObject
from app.services import artifacts, batches
from app.services.datasets import access as dataset_access
from app.services.datasets import intake as dataset_intake
from app.services.datasets import service as datasets
from app.services.runs import access as run_access
from app.services.runs import results as job_results
from app.services.workspaces.access import WorkspaceContext

router = APIRouter(prefix="/v1/files", tags=["openai: files"])

SUPPORTED_PURPOSE = "fine-tune"


def file_id(dataset_id: int) -> str:
    return f"{FILE_PREFIX}{dataset_id}"


RESULTS_PREFIX = f"{FILE_PREFIX}results-"
RAW_PREFIX = f"{FILE_PREFIX}raw-"
RAW_PURPOSES = (batches.BATCH_PURPOSE, batches.OUTPUT_PURPOSE)


def raw_file_id(stored_id: int) -> str:
    return f"{RAW_PREFIX}{stored_id}"


def stored_for_file(
    *, session: Session, ctx: WorkspaceContext, file: str, param: str | None = None
) -> StoredFile | None:
    """The stored file behind a `file-raw-` id; None if `file` is not one; 404 if unknown."""
    if not file.startswith(RAW_PREFIX):
        return None
    number = parse_id(file, RAW_PREFIX, noun="file", param=param)
    try:
        return batches.get_file(session=session, ctx=ctx, file_id=number)
    except NotFound:
        raise NotFound(f"no such file: {file!r}", param=param) from None


def stored_to_file(row: StoredFile) -> FileObject:
    return FileObject(
        id=raw_file_id(row.id),
        bytes=row.size_bytes,
        created_at=unix(row.created_at),
        filename=row.filename,
        purpose=row.purpose,
    )


RESULTS_PURPOSE = "fine-tune-results"


def results_file_id(run_id: int) -> str:
    return f"{RESULTS_PREFIX}{run_id}"


def _results_run(*, session: Session, ctx: WorkspaceContext, file: str) -> Run | None:
    """The finished run behind a results file id; None if `file` is not one; 404 if unknown."""
    if not file.startswith(RESULTS_PREFIX):
        return None
    run_id = parse_id(file, RESULTS_PREFIX, noun="file")
    try:
        run = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    except NotFound:
        raise NotFound(f"no such file: {file!r}") from None
    if not RunStatus(run.status).is_terminal or not job_results.has_metrics(
        session=session, run_id=run.id
    ):
        raise NotFound(f"no such file: {file!r} (the job has no results yet)")
    return run


def _results_filename(run: Run) -> str:
    return f"step_metrics_ftjob-{run.id}.csv"


def dataset_for_file(
    *, session: Session, ctx: WorkspaceContext, file: str, param: str | None = None
) -> Dataset:
    """The dataset behind a file id of this workspace, or 404 naming the file id."""
    dataset_id = parse_id(file, FILE_PREFIX, noun="file", param=param)
    try:
        return dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    except NotFound:
        raise NotFound(f"no such file: {file!r}", param=param) from None


def to_file(dataset: Dataset) -> FileObject:
    return FileObject(
        id=file_id(dataset.id),
        bytes=dataset.size_bytes,
        created_at=unix(dataset.created_at),
        filename=dataset.filename,
        purpose=dataset.purpose,
    )


@router.post("", response_model=FileObject)
def create_file(
    session: SessionDep,
    ctx: Workspace,
    file: Annotated[
        UploadFile, File(description="JSONL, JSON, CSV, TSV, Parquet or text; optionally .gz")
    ],
    purpose: Annotated[str, Form()],
) -> FileObject:
    if purpose == batches.BATCH_PURPOSE:
        # Kept as uploaded; its request lines are checked when a batch is created from it.
        row = batches.store_upload(
            session=session, ctx=ctx, stream=file.file, filename=file.filename, purpose=purpose
        )
        return stored_to_file(row)
    if purpose != SUPPORTED_PURPOSE:
        raise ValidationFailed(
            f"purpose {purpose!r} is not supported: this server stores training data "
            f"('{SUPPORTED_PURPOSE}') and batch inputs ('{batches.BATCH_PURPOSE}')",
            param="purpose",
        )
    # Each upload is its own file object, as at OpenAI: identical bytes share storage only.
    dataset = dataset_intake.create_from_upload(
        session=session,
        ctx=ctx,
        stream=file.file,
        filename=file.filename,
        purpose=purpose,
        reuse_duplicate=False,
    )
    return to_file(dataset)


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    ctx: Workspace,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    if purpose in RAW_PURPOSES:
        raw_after = None
        if after is not None:
            raw_after = parse_number(after, RAW_PREFIX)
            if raw_after is None:
                raise ValidationFailed(
                    f"after: {after!r} is not a {purpose} file id", param="after"
                )
        stored = batches.page_files(
            session=session,
            ctx=ctx,
            purpose=purpose,
            after_id=raw_after,
            limit=limit + 1,
            ascending=order == "asc",
        )
        listed = [stored_to_file(r) for r in stored[:limit]]
        return FileList(
            data=listed,
            first_id=listed[0].id if listed else "",
            last_id=listed[-1].id if listed else "",
            has_more=len(stored) > limit,
        )
    if purpose is None:
        return _all_files(session, ctx, limit=limit, ascending=order == "asc", after=after)
    after_id = None
    if after is not None:
        after_id = parse_number(after, FILE_PREFIX)
        if after_id is None:
            raise ValidationFailed(f"after: {after!r} is not a file id", param="after")
    rows = datasets.page_for_workspace(
        session=session,
        ctx=ctx,
        after_id=after_id,
        limit=limit + 1,
        ascending=order == "asc",
        purpose=purpose,
    )
    data = [to_file(d) for d in rows[:limit]]
    return FileList(
        data=data,
        first_id=data[0].id if data else "",
        last_id=data[-1].id if data else "",
        has_more=len(rows) > limit,
    )


# Files one unfiltered listing reads from each of its two sources (datasets, stored files).
MAX_LISTED = 10_000


def _listing_order(file: FileObject) -> tuple[int, bool, int]:
    """Creation time, then datasets before stored files, then the id's number."""
    return file.created_at, file.id.startswith(RAW_PREFIX), int(file.id.rsplit("-", 1)[1])


def _all_files(
    session: Session, ctx: WorkspaceContext, *, limit: int, ascending: bool, after: str | None
) -> FileList:
    """Training files and batch files in one list by creation time (OpenAI lists every file
    without a purpose). The two sources are merged here, so `after` may name either kind; a
    workspace's newest MAX_LISTED of each are what is listed."""
    rows = [
        to_file(d)
        for d in datasets.page_for_workspace(
            session=session, ctx=ctx, limit=MAX_LISTED, ascending=ascending
        )
    ] + [
        stored_to_file(r)
        for r in batches.page_files(
            session=session,
            ctx=ctx,
            purpose=None,
            after_id=None,
            limit=MAX_LISTED,
            ascending=ascending,
        )
    ]
    rows.sort(key=_listing_order, reverse=not ascending)
    if after is not None:
        ids = [f.id for f in rows]
        if after not in ids:
            raise ValidationFailed(f"after: {after!r} is not a file of this list", param="after")
        rows = rows[ids.index(after) + 1 :]
    data = rows[:limit]
    return FileList(
        data=data,
        first_id=data[0].id if data else "",
        last_id=data[-1].id if data else "",
        has_more=len(rows) > limit,
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: SessionDep, ctx: Workspace) -> FileObject:
    run = _results_run(session=session, ctx=ctx, file=file_id)
    if run is not None:
        return FileObject(
            id=file_id,
            bytes=len(job_results.metrics_csv(session=session, run_id=run.id)),
            created_at=unix(run.finished_at or run.created_at),
            filename=_results_filename(run),
            purpose=RESULTS_PURPOSE,
        )
    stored = stored_for_file(session=session, ctx=ctx, file=file_id)
    if stored is not None:
        return stored_to_file(stored)
    return to_file(dataset_for_file(session=session, ctx=ctx, file=file_id))


@router.get("/{file_id}/content", response_class=FileResponse)
def download_file(file_id: str, session: SessionDep, ctx: Workspace) -> Response:
    run = _results_run(session=session, ctx=ctx, file=file_id)
    if run is not None:
        return Response(
            job_results.metrics_csv(session=session, run_id=run.id),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{_results_filename(run)}"'},
        )
    stored = stored_for_file(session=session, ctx=ctx, file=file_id)
    if stored is not None:
        return FileResponse(
            artifacts.existing(stored.storage_key),
            media_type="application/octet-stream",
            filename=stored.filename,
        )
    dataset = dataset_for_file(session=session, ctx=ctx, file=file_id)
    return FileResponse(  # the bytes as uploaded, like OpenAI's file content
        artifacts.existing(datasets.original_key(session=session, dataset=dataset)),
        media_type="application/octet-stream",
        filename=dataset.filename,
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, session: SessionDep, ctx: Workspace) -> FileDeleted:
    if _results_run(session=session, ctx=ctx, file=file_id) is not None:
        raise ValidationFailed(
            f"{file_id} is the results of a fine-tuning job, made from its metrics on request; "
            "it goes when the job's run is deleted",
            param="file_id",
        )
    stored = stored_for_file(session=session, ctx=ctx, file=file_id)
    if stored is not None:
        batches.delete_file(session=session, ctx=ctx, file_id=stored.id)
        return FileDeleted(id=file_id)
    dataset = dataset_for_file(session=session, ctx=ctx, file=file_id)
    datasets.delete(session=session, ctx=ctx, dataset_id=dataset.id)
    return FileDeleted(id=file_id)
