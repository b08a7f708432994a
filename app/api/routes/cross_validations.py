"""K-fold cross-validations: launch, inspect (per fold, mean ± std), register a fold or a
final fit."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import SessionDep, Workspace
from app.api.schemas.evaluation import (
    CrossValidationCreate,
    CrossValidationRead,
    CrossValidationRegister,
)
from app.api.schemas.registry import ModelVersionRead
from app.services.evaluation import cross_validation

router = APIRouter(prefix="/api/v1/cross-validations", tags=["evaluation"])


@router.get("", response_model=list[CrossValidationRead])
def read_cross_validations(session: SessionDep, ctx: Workspace) -> list[CrossValidationRead]:
    rows = cross_validation.list_for_workspace(session=session, ctx=ctx)
    return [CrossValidationRead(**cross_validation.summary(session=session, cv=cv)) for cv in rows]


@router.post("", response_model=CrossValidationRead, status_code=status.HTTP_201_CREATED)
def create_cross_validation(
    body: CrossValidationCreate, session: SessionDep, ctx: Workspace
) -> CrossValidationRead:
    cv = cross_validation.create(
        session=session,
        ctx=ctx,
        dataset_id=body.dataset_id,
        dataset_version_id=body.dataset_version_id,
        base_model=body.base_model,
        config=body.config,
        k=body.k,
        stratify=body.stratify,
        seed=body.seed,
        name=body.name,
    )
    return CrossValidationRead(**cross_validation.summary(session=session, cv=cv))


@router.get("/{cv_id}", response_model=CrossValidationRead)
def read_cross_validation(cv_id: int, session: SessionDep, ctx: Workspace) -> CrossValidationRead:
    cv = cross_validation.get(session=session, ctx=ctx, cv_id=cv_id)
    return CrossValidationRead(**cross_validation.summary(session=session, cv=cv))


@router.post("/{cv_id}/register", response_model=ModelVersionRead)
def register_fold(
    cv_id: int, body: CrossValidationRegister, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    """Register the chosen fold's final model as a version of the registry."""
    version = cross_validation.register_fold(session=session, ctx=ctx, cv_id=cv_id, fold=body.fold)
    return ModelVersionRead.model_validate(version)


@router.post("/{cv_id}/final-fit", response_model=CrossValidationRead, status_code=202)
def launch_final_fit(cv_id: int, session: SessionDep, ctx: Workspace) -> CrossValidationRead:
    """Train the same configuration on every non-test row; it registers when it ends."""
    cross_validation.launch_final_fit(session=session, ctx=ctx, cv_id=cv_id)
    cv = cross_validation.get(session=session, ctx=ctx, cv_id=cv_id)
    return CrossValidationRead(**cross_validation.summary(session=session, cv=cv))
