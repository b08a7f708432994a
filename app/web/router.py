"""Aggregates the HTML pages' routers; nothing else."""

from fastapi import APIRouter

from app.web import (
    admin_pages,
    auth_pages,
    compare_pages,
    dashboard_pages,
    dataset_prep_pages,
    datasets_pages,
    deployments_pages,
    evaluation_pages,
    models_pages,
    playground_pages,
    queue_pages,
    registry_pages,
    runs_pages,
    settings_pages,
    sweeps_pages,
    workers_pages,
)

pages_router = APIRouter()
for module in (
    auth_pages,
    dashboard_pages,
    datasets_pages,
    dataset_prep_pages,
    runs_pages,
    queue_pages,
    sweeps_pages,
    evaluation_pages,
    compare_pages,
    models_pages,
    registry_pages,
    deployments_pages,
    playground_pages,
    settings_pages,
    admin_pages,
    workers_pages,
):
    pages_router.include_router(module.router)
