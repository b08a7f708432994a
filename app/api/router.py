"""Aggregates the JSON API's routers; nothing else."""

from fastapi import APIRouter

from app.api.routes import (
    auth,
    datasets,
    deployments,
    docs,
    models,
    runs,
    system,
    tokens,
    workers,
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
    deployments,
    workers,
):
    api_router.include_router(module.router)
