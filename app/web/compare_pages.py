"""The compare page: chosen runs' curves overlaid, their config differences, final metrics."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.services.runs import compare as run_compare
from app.services.runs import service as runs
from app.web.pages import DbDep, PageDep, PageRoute
from app.web.rendering import render

router = APIRouter(prefix="/compare", route_class=PageRoute, include_in_schema=False)

# Offered first in the metric menu when the runs have it (what people compare most).
PREFERRED_METRICS = ("eval_loss", "train_loss")


@router.get("")
def compare(
    request: Request,
    session: DbDep,
    pc: PageDep,
    run: Annotated[list[int] | None, Query(description="run ids, repeated")] = None,
) -> Response:
    """`/compare?run=1&run=2` (what the runs list's checkboxes submit); the curves are drawn by
    static/js/compare.js from the series API, the tables are rendered here."""
    chosen = run_compare.runs_for_compare(session=session, ctx=pc.ctx, run_ids=run) if run else []
    ids = [r.id for r in chosen]
    metrics = run_compare.metric_names(session=session, run_ids=ids) if ids else []
    finals = [runs.latest_metrics(session=session, run_id=r.id) for r in chosen]
    diff = run_compare.config_diff([run_compare.comparable_settings(r) for r in chosen])
    default_metric = next((m for m in PREFERRED_METRICS if m in metrics), None)
    context: dict[str, Any] = {
        "runs": chosen,
        "metrics": metrics,
        "metric": default_metric or (metrics[0] if metrics else None),
        "finals": finals,
        "diff": diff,
        "missing": run_compare.MISSING,
        "series_url": "/api/v1/compare/series?" + urlencode([("run_ids", i) for i in ids]),
        "runs_json": [{"id": r.id, "name": r.name} for r in chosen],
        "max_runs": run_compare.MAX_RUNS,
    }
    return render(request, "compare.html", context)
