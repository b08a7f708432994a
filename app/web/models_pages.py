"""Registry pages: versions with lineage, exports, one-click deploy (the deployments page
itself is deployments_pages)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.core.errors import NotFound, ServiceUnavailable, ValidationFailed
from app.core.settings import get_settings
from app.db.base import MAX_ID
from app.db.models import Deployment, DeploymentStatus
from app.services.datasets import service as datasets
from app.services.registry import compare as version_compare
from app.services.registry import versions as registry
from app.services.serving import control as deployment_control
from app.services.serving import deployments
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect
from app.web.rendering import is_htmx, render

router = APIRouter(route_class=PageRoute, include_in_schema=False)


# Versions shown per model on the registry page; `?model=<id>` shows all of one model's.
# (A workspace registers a version per successful run: a thousand runs made a 2 MB page.)
VERSIONS_SHOWN = 3


def _models_context(
    session: Session, pc: PageContext, model_id: int | None = None
) -> dict[str, Any]:
    live = [
        d
        for d in deployments.list_for_workspace(session=session, ctx=pc.ctx)
        if d.status != DeploymentStatus.stopped
    ]
    models = registry.list_models(session=session, ctx=pc.ctx)
    if model_id is not None:
        models = [m for m in models if m.id == model_id]
        if not models:
            raise NotFound(f"registered model {model_id} not found")
    versions = registry.newest_versions(
        session=session,
        ctx=pc.ctx,
        per_model=None if model_id is not None else VERSIONS_SHOWN,
        model_id=model_id,
    )
    dataset_ids = {
        int(v.lineage["dataset_id"])
        for shown in versions.values()
        for v in shown
        if isinstance(v.lineage, dict) and isinstance(v.lineage.get("dataset_id"), int)
    }
    return {
        "models": models,
        "versions": versions,
        "version_counts": registry.version_counts(session=session, ctx=pc.ctx),
        "one_model": model_id is not None,
        "dataset_names": datasets.names_for(session=session, ctx=pc.ctx, ids=dataset_ids),
        # The newest live deployment of each version (the list is newest first).
        "deployed": {d.model_version_id: d for d in reversed(live)},
        "import_dir": get_settings().import_dir,
        "max_model_import_bytes": get_settings().max_model_import_bytes,
        # One model's page compares its versions side by side on the same evaluations.
        "comparison": (
            version_compare.comparison(session=session, ctx=pc.ctx, model_id=model_id)
            if model_id is not None
            else None
        ),
    }


def models_page_with_error(
    request: Request, session: Session, pc: PageContext, message: str, status_code: int
) -> Response:
    """The registry page again with the reason an import was refused."""
    context = {**_models_context(session, pc), "import_error": message}
    return render(request, "models.html", context, status_code=status_code)


@router.get("/models")
def model_list(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    return render(request, "models.html", _models_context(session, pc, model))


@router.post("/models/versions/{version_id}/deploy", dependencies=[CSRF])
async def deploy_version(
    version_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    """Record the deployment and ask the inference server to load it; say so if it is down."""
    try:
        deployment: Deployment = await deployment_control.deploy(
            session=session, ctx=pc.ctx, version_id=version_id
        )
    except (ServiceUnavailable, ValidationFailed) as exc:
        # The deployment is recorded as failed with the reason; the person is told why.
        message = exc.message
        if is_htmx(request):
            return render(request, "_deploy_result.html", {"error": message})
        context = await run_in_threadpool(_models_context, session, pc)
        return await run_in_threadpool(
            render,
            request,
            "models.html",
            {**context, "deploy_error": message},
            status_code=exc.status_code,
        )
    serving_name = deployment.model_version.serving_name
    if is_htmx(request):
        return render(request, "_deploy_result.html", {"serving_name": serving_name})
    return redirect(request, "/deployments")
