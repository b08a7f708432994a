"""Aggregates the JSON API's routers; nothing else."""

from fastapi import APIRouter

from app.api.routes import (
    auth,
    base_models,
    datasets,
    deployments,
    docs,
    models,
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
    base_models,
    models,
    deployments,
):
    api_router.include_router(module.router)
