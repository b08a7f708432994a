"""Dataset versions made by preparation, and the model view of a version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import SessionDep, Workspace
from app.api.schemas.datasets import DatasetVersionRead
from app.db.base import MAX_ID
from app.services.datasets import access as dataset_access
from app.services.datasets import prep as dataset_prep

router = APIRouter(prefix="/api/v1/datasets", tags=["dataset versions"])


class VersionPrepare(BaseModel):
    """A new version: the parent it is prepared from and the recipe (steps, split, tokenize).

    The recipe is validated by the service so that every problem comes back in one message."""

    model_config = ConfigDict(extra="forbid")
    parent_version_id: int = Field(ge=1, le=MAX_ID)
    recipe: dict[str, Any] = Field(default_factory=dict)


class ModelViewState(BaseModel):
    status: str  # ready | computing | failed | absent
    key: str
    result: dict[str, Any] | None = None
    error: str | None = None


@router.post(
    "/{dataset_id}/versions",
    response_model=DatasetVersionRead,
    status_code=status.HTTP_202_ACCEPTED,
    response_model_by_alias=True,
)
def prepare_version(
    dataset_id: int, body: VersionPrepare, session: SessionDep, ctx: Workspace
) -> DatasetVersionRead:
    """Queue the preparation; poll the version (status, progress) until it is ready."""
    recipe = dataset_prep.parse_recipe(body.recipe)
    version = dataset_prep.create_version(
        session=session,
        ctx=ctx,
        dataset_id=dataset_id,
        parent_version_id=body.parent_version_id,
        recipe=recipe,
    )
    return DatasetVersionRead.model_validate(version)


@router.get(
    "/{dataset_id}/versions/{version_id}/model-view",
    response_model=ModelViewState,
    response_model_exclude_none=True,
)
def read_model_view(
    dataset_id: int,
    version_id: int,
    session: SessionDep,
    ctx: Workspace,
    tokenizer: str = "scratch",
    vocab_size: int = Query(4096),
    max_length: int = Query(512),
    chat_template: bool = True,
    sample_rows: int = Query(500),
    detail_rows: int = Query(8),
) -> ModelViewState:
    """The stored view for these settings, or whether it is still being computed."""
    settings = dataset_prep.parse_model_view_settings(
        {
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "max_length": max_length,
            "chat_template": chat_template,
            "sample_rows": sample_rows,
            "detail_rows": detail_rows,
        }
    )
    version = dataset_access.get_version_for_member(
        session=session, ctx=ctx, dataset_id=dataset_id, version_id=version_id
    )
    return ModelViewState(**dataset_prep.model_view_state(version, settings))


@router.post(
    "/{dataset_id}/versions/{version_id}/model-view",
    response_model=ModelViewState,
    status_code=status.HTTP_202_ACCEPTED,
    response_model_exclude_none=True,
)
def request_model_view(
    dataset_id: int,
    version_id: int,
    body: dict[str, Any],
    session: SessionDep,
    ctx: Workspace,
) -> ModelViewState:
    """Compute the view in a worker (cpu queue) unless it is stored already."""
    settings = dataset_prep.parse_model_view_settings(body)
    version = dataset_access.get_version_for_member(
        session=session, ctx=ctx, dataset_id=dataset_id, version_id=version_id
    )
    return ModelViewState(
        **dataset_prep.request_model_view(
            session=session, ctx=ctx, version=version, settings=settings
        )
    )
