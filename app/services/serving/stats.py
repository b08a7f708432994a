"""Each deployment's live figures, as the deployments page and the API show them: the
inference server's latency, time to first token and tokens/s, with the web's request counts."""

from __future__ import annotations

from typing import Any

from app.db.models import Deployment
from app.services.serving import metrics as serving_metrics
from app.services.serving.targets import inference_key


def stats_by_deployment(
    deployments: list[Deployment], loaded: list[dict[str, Any]] | None
) -> dict[int, dict[str, Any]]:
    """Each deployment's live figures, plus `backend` (the engine serving it) and
    `backend_reason` (why that engine; docs/serving.md).

    Latency and throughput come from the inference server (none while it is unreachable).
    """
    by_key = {
        entry["name"]: {
            **(entry.get("stats") or {}),
            "backend": entry.get("backend"),
            "backend_reason": entry.get("backend_reason"),
        }
        for entry in loaded or []
    }
    counted = serving_metrics.request_counts()
    return {
        d.id: _with_web_counts(
            by_key.get(inference_key(d.model_version), {}), counted.get(str(d.id), {})
        )
        for d in deployments
    }


def _with_web_counts(server: dict[str, Any], web: dict[str, int]) -> dict[str, Any]:
    """Request counts are the web's: it sees what it refuses and /predict, the server does not.
    Cancellations are the larger count: the server also sees callers that went away after
    the web had handed their stream on."""
    return {
        **server,
        "requests": web.get("requests", 0),
        "rejected": web.get("rejected", 0),
        "errors": web.get("errors", 0),
        "cancelled": max(web.get("cancelled", 0), int(server.get("cancelled") or 0)),
    }
