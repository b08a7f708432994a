"""Datasets, their versions, preview rows and statistics."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime


class DatasetRead(ORM):
    id: int
    name: str
    filename: str
    format: str
    purpose: str
    sha256: str
    size_bytes: int
    num_rows: int
    created_at: UtcDateTime


class DatasetDetail(DatasetRead):
    preview: list[dict[str, Any]]
    # Set on upload answers: `duplicate` when the same bytes were already uploaded to this
    # workspace (the existing dataset is returned, nothing new stored).
    duplicate: bool = False
    message: str | None = None
    version_id: int | None = Field(None, description="The dataset's newest ready version.")
    detection: dict[str, Any] | None = None
    rejected_rows: int = 0
    problems: list[str] = Field(default_factory=list)


class DatasetVersionRead(ORM):
    id: int
    dataset_id: int
    version: int
    parent_id: int | None
    schema_: str = Field(alias="schema", validation_alias="schema")
    sha256: str
    num_rows: int
    size_bytes: int
    recipe: dict[str, Any]
    report: dict[str, Any]
    status: str
    progress: float
    error: str | None
    created_at: UtcDateTime

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class PreviewRow(BaseModel):
    row: int
    data: dict[str, Any]


class DatasetPreview(BaseModel):
    version_id: int
    items: list[PreviewRow]
    offset: int
    limit: int
    has_more: bool
    query: str | None


class DatasetStats(BaseModel):
    version_id: int
    schema_: str = Field(alias="schema")
    num_rows: int
    stats: dict[str, Any]
    detection: dict[str, Any] | None = None

    model_config = ConfigDict(populate_by_name=True)
