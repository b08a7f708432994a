"""Datasets: upload (ingested while streaming), list, versions, preview, stats, download, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, Workspace
from app.api.schemas.datasets import (
    DatasetDetail,
    DatasetPreview,
    DatasetRead,
    DatasetStats,
    DatasetVersionRead,
    PreviewRow,
)
from app.db.base import MAX_ID
from app.db.models import Dataset, DatasetVersion
from app.services.datasets import access as dataset_access
from app.services.datasets import intake as dataset_intake
from app.services.datasets import service as datasets
from app.services.datasets import versions as dataset_versions
from app.services.workspaces.access import WorkspaceContext

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])

SchemaName = Literal[
    "text",
    "prompt_completion",
    "chat",
    "instruction",
    "classification",
    "seq2seq",
    "preference",
    "kto",
    "token_classification",
]


def detail(session: Session, dataset: Dataset, *, duplicate: bool = False) -> DatasetDetail:
    version = dataset_versions.newest_ready(session=session, dataset=dataset)
    report = (version.report or {}) if version is not None else {}
    upload = report.get("upload") or {}
    return DatasetDetail(
        **DatasetRead.model_validate(dataset).model_dump(),
        preview=datasets.preview(dataset=dataset),
        duplicate=duplicate,
        message=(
            f"this file was already uploaded as dataset {dataset.id} ({dataset.name}); "
            "nothing new was stored"
            if duplicate
            else None
        ),
        version_id=version.id if version is not None else None,
        detection=report.get("detection"),
        rejected_rows=int(upload.get("rejected_rows") or 0),
        problems=list(report.get("problems") or []),
    )


@router.get("", response_model=list[DatasetRead])
def read_datasets(
    session: SessionDep,
    ctx: Workspace,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[DatasetRead]:
    rows = datasets.list_for_workspace(session=session, ctx=ctx, limit=limit, offset=offset)
    return [DatasetRead.model_validate(d) for d in rows]


@router.post("", response_model=DatasetDetail, status_code=status.HTTP_201_CREATED)
def upload_dataset(
    session: SessionDep,
    ctx: Workspace,
    response: Response,
    file: Annotated[
        UploadFile,
        File(description="CSV, TSV, JSONL, JSON array, Parquet or text; optionally .gz"),
    ],
    name: Annotated[str | None, Form(max_length=255)] = None,
    schema_name: Annotated[
        SchemaName | None, Form(alias="schema", description="Skip detection.")
    ] = None,
    column_map: Annotated[
        str | None,
        Form(max_length=4000, description="JSON object: canonical key -> source column"),
    ] = None,
    on_error: Annotated[Literal["reject", "keep_valid"], Form()] = "reject",
    text_split: Annotated[Literal["blocks", "lines", "file"], Form()] = "blocks",
) -> DatasetDetail:
    """A duplicate upload (same bytes in this workspace) answers 200 with `duplicate: true`."""
    options = dataset_intake.parse_options(
        schema=schema_name, column_map=column_map, on_error=on_error, text_split=text_split
    )
    outcome = dataset_intake.ingest_upload(
        session=session,
        ctx=ctx,
        stream=file.file,
        filename=file.filename,
        name=name,
        options=options,
    )
    if outcome.duplicate:
        response.status_code = status.HTTP_200_OK
    return detail(session, outcome.dataset, duplicate=outcome.duplicate)


@router.get("/{dataset_id}", response_model=DatasetDetail)
def read_dataset(dataset_id: int, session: SessionDep, ctx: Workspace) -> DatasetDetail:
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    return detail(session, dataset)


@router.get("/{dataset_id}/versions", response_model=list[DatasetVersionRead])
def read_versions(dataset_id: int, session: SessionDep, ctx: Workspace) -> list[DatasetVersionRead]:
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    rows = dataset_versions.list_for_dataset(session=session, dataset=dataset)
    return [DatasetVersionRead.model_validate(v) for v in rows]


@router.get("/{dataset_id}/versions/{version_id}", response_model=DatasetVersionRead)
def read_version(
    dataset_id: int, version_id: int, session: SessionDep, ctx: Workspace
) -> DatasetVersionRead:
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    version = dataset_versions.get_for_dataset(
        session=session, ctx=ctx, dataset=dataset, version_id=version_id
    )
    return DatasetVersionRead.model_validate(version)


def _version(
    session: Session, ctx: WorkspaceContext, dataset_id: int, version_id: int | None
) -> tuple[Dataset, DatasetVersion]:
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    return dataset, dataset_versions.chosen(
        session=session, ctx=ctx, dataset=dataset, version_id=version_id
    )


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def read_preview(
    dataset_id: int,
    session: SessionDep,
    ctx: Workspace,
    version_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    q: Annotated[str | None, Query(max_length=200, description="Text to search for")] = None,
) -> DatasetPreview:
    _, version = _version(session, ctx, dataset_id, version_id)
    page = datasets.preview_page(version=version, offset=offset, limit=limit, query=q)
    return DatasetPreview(
        version_id=version.id,
        items=[PreviewRow(**item) for item in page.items],
        offset=page.offset,
        limit=page.limit,
        has_more=page.has_more,
        query=page.query,
    )


@router.get("/{dataset_id}/stats", response_model=DatasetStats)
def read_stats(
    dataset_id: int,
    session: SessionDep,
    ctx: Workspace,
    version_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> DatasetStats:
    _, version = _version(session, ctx, dataset_id, version_id)
    report = version.report or {}
    return DatasetStats(
        version_id=version.id,
        schema_=version.schema,
        num_rows=version.num_rows,
        stats=report.get("stats") or {},
        detection=report.get("detection"),
    )


@router.get("/{dataset_id}/download", response_class=FileResponse)
def download(
    dataset_id: int,
    session: SessionDep,
    ctx: Workspace,
    kind: Literal["canonical", "original", "rejected"] = "canonical",
    version_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> FileResponse:
    """Streamed from the artifact store: the canonical JSONL of a version (default: newest
    ready), the uploaded original, or the rows rejected at upload (line number + reason)."""
    dataset, version = _version(session, ctx, dataset_id, version_id)
    path, filename, media = datasets.download_target(
        session=session, dataset=dataset, version=version, kind=kind
    )
    return FileResponse(path, media_type=media, filename=filename)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: int, session: SessionDep, ctx: Workspace) -> None:
    datasets.delete(session=session, ctx=ctx, dataset_id=dataset_id)
