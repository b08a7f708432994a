"""Labels and scores from a deployed classifier (`/api/v1/deployments/{id}/predict` and the
classifier playground), counted in the deployment's traffic figures like a chat request."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.errors import InvalidTransition, ServiceUnavailable, ValidationFailed
from app.db.models import DeploymentStatus
from app.services.serving import access as deployment_access
from app.services.serving import inference_client
from app.services.serving import metrics as serving_metrics
from app.services.serving.targets import ServingTarget, target_for_version
from app.services.workspaces.access import WorkspaceContext


async def predict(
    *, session: Session, ctx: WorkspaceContext, deployment_id: int, inputs: str | list[str]
) -> dict[str, Any]:
    """Labels and scores from a deployed classification model."""
    deployment = await run_in_threadpool(
        deployment_access.get_for_member, session=session, ctx=ctx, deployment_id=deployment_id
    )
    if deployment.status == DeploymentStatus.stopped:
        raise InvalidTransition(f"deployment {deployment_id} is stopped")
    target = target_for_version(deployment.model_version, deployment)
    await run_in_threadpool(session.commit)  # give the connection back during inference
    return await classify(target, inputs)


async def classify(target: ServingTarget, inputs: str | list[str]) -> dict[str, Any]:
    """Labels and scores of `inputs` from the classifier behind `target`, counted in the
    deployment's traffic figures like a chat request (refusals as rejected, failures as errors)."""
    timer = serving_metrics.RequestTimer(serving_metrics.label_for(target))
    try:
        answer = await inference_client.predict(
            target.key, target.path, inputs, **target.load_options
        )
    except inference_client.InferenceUnavailable as exc:
        timer.done(503)
        raise ServiceUnavailable(str(exc)) from exc
    except inference_client.InferenceError as exc:
        timer.done(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code < 500:
            raise ValidationFailed(detail) from exc
        raise ServiceUnavailable(detail) from exc
    timer.first_token()
    timer.done(200)
    return answer
