"""Aggregates the JSON API's routers; nothing else."""

from fastapi import APIRouter

from app.api.routes import (
    auth,
    datasets,
    deployments,
    docs,
    model_versions,
    models,
    run_compare,
    runs,
    system,
    tokens,
    workspaces,
)

api_router = APIRouter()
for module in (
    system,
    docs,
    auth,
    tokens,
    workspaces,
    datasets,
    runs,
    models,
    model_versions,
    deployments,
):
    api_router.include_router(module.router)
api_router.include_router(run_compare.router)
