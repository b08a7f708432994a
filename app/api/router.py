"""Aggregates the JSON API's routers; nothing else."""

from fastapi import APIRouter

from app.api.routes import (
    auth,
    dataset_versions,
    datasets,
    deployments,
    docs,
    models,
    runs,
    system,
    tokens,
    uploads,
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
    dataset_versions,
    uploads,
    runs,
    models,
    deployments,
):
    api_router.include_router(module.router)
