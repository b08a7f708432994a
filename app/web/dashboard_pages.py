"""The dashboard: recent runs, counts of datasets, models and deployments."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from app.db.models import DeploymentStatus, RunStatus
from app.services.datasets import service as datasets
from app.services.registry import versions as registry
from app.services.runs import service as runs
from app.services.serving import deployments
from app.services.workspaces import users
from app.web.pages import DbDep, PageRoute, page_context
from app.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

RECENT_RUNS = 8
ACTIVE = {RunStatus.queued, RunStatus.running, RunStatus.interrupted}


@router.get("/")
def dashboard(request: Request, session: DbDep) -> Response:
    # A fresh install goes to setup first (before the sign-in check sends it to /login).
    if not users.has_any_user(session=session):
        return RedirectResponse("/setup", status_code=303)
    pc = page_context(request, session)
    ctx = pc.ctx
    recent = runs.list_for_workspace(session=session, ctx=ctx, limit=RECENT_RUNS, with_dataset=True)
    live = [
        d
        for d in deployments.list_for_workspace(session=session, ctx=ctx)
        if d.status != DeploymentStatus.stopped
    ]
    return render(
        request,
        "dashboard.html",
        {
            "runs": recent,
            "run_count": runs.count_for_workspace(session=session, ctx=ctx),
            "active_count": sum(1 for r in recent if r.status in ACTIVE),
            "dataset_count": datasets.count_for_workspace(session=session, ctx=ctx),
            "model_count": registry.count_models(session=session, ctx=ctx),
            "version_count": registry.count_versions(session=session, ctx=ctx),
            "live_deployments": live,
            "ready_count": sum(1 for d in live if d.status == DeploymentStatus.ready),
        },
        block="recent_runs",
    )
