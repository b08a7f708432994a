"""Datasets: upload (validated while streaming), list, inspect with a preview, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from app.api.deps import SessionDep, Workspace
from app.api.schemas import DatasetDetail, DatasetRead
from app.db.base import MAX_ID
from app.services import datasets

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


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
    file: Annotated[UploadFile, File(description='.jsonl ({"text"} or {"messages"}) or .txt')],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> DatasetDetail:
    dataset = datasets.create_from_upload(
        session=session, ctx=ctx, stream=file.file, filename=file.filename, name=name
    )
    session.commit()
    return DatasetDetail(
        **DatasetRead.model_validate(dataset).model_dump(),
        preview=datasets.preview(dataset=dataset),
    )


@router.get("/{dataset_id}", response_model=DatasetDetail)
def read_dataset(dataset_id: int, session: SessionDep, ctx: Workspace) -> DatasetDetail:
    dataset = datasets.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    return DatasetDetail(
        **DatasetRead.model_validate(dataset).model_dump(),
        preview=datasets.preview(dataset=dataset),
    )


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: int, session: SessionDep, ctx: Workspace) -> None:
    datasets.delete(session=session, ctx=ctx, dataset_id=dataset_id)
