"""The model registry: registered models and their versions."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep, Workspace
from app.api.schemas.registry import ModelVersionRead, RegisteredModelRead
from app.services.registry import access as registry_access
from app.services.registry import versions as registry

router = APIRouter(prefix="/api/v1", tags=["registry"])


@router.get("/models", response_model=list[RegisteredModelRead])
def read_models(session: SessionDep, ctx: Workspace) -> list[RegisteredModelRead]:
    return [
        RegisteredModelRead.model_validate(m)
        for m in registry.list_models(session=session, ctx=ctx, with_versions=True)
    ]


@router.get("/model-versions/{version_id}", response_model=ModelVersionRead)
def read_model_version(version_id: int, session: SessionDep, ctx: Workspace) -> ModelVersionRead:
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    return ModelVersionRead.model_validate(version)
