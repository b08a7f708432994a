"""Health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app.api.deps import CurrentUser, SessionDep
from app.services.serving import metrics as serving_metrics

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz(session: SessionDep) -> dict[str, str]:
    """Liveness and database reachability; the only route that needs no authentication."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
def prometheus_metrics(user: CurrentUser) -> Response:
    return Response(serving_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
