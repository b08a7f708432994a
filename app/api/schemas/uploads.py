"""Resumable uploads of datasets and model files."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import ORM, UtcDateTime


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    total_size: int = Field(ge=1, description="The file's size in bytes.")
    purpose: Literal["dataset", "model"] = Field(
        "dataset",
        description="dataset: completed by POST .../complete; model (a .zip of a Hugging Face "
        "folder or a .gguf file): completed by POST .../import-model",
    )


class UploadModelImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="the registered model's name")


class UploadRead(ORM):
    id: int
    filename: str
    total_size: int
    received: int
    status: str
    dataset_id: int | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
