"""Aggregates the JSON API's routers; nothing else."""

from fastapi import APIRouter

from app.api.routes import (
    admin,
    arena,
    audit,
    auth,
    base_models,
    cross_validations,
    dataset_versions,
    datasets,
    deployments,
    docs,
    model_versions,
    models,
    queue,
    run_compare,
    runs,
    sweeps,
    system,
    tokens,
    uploads,
    workers,
    workspaces,
)
from app.api.schemas.errors import API_ERRORS

api_router = APIRouter(responses=API_ERRORS)
for module in (
    system,
    docs,
    auth,
    tokens,
    workspaces,
    admin,
    datasets,
    dataset_versions,
    uploads,
    runs,
    queue,
    sweeps,
    cross_validations,
    run_compare,
    base_models,
    models,
    model_versions,
    deployments,
    arena,
    audit,
    workers,
):
    api_router.include_router(module.router)
