"""The deployments page: the list with status and figures, examples to copy, and its actions
(deploy with settings, scale, redeploy with zero downtime, stop)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden, NotFound, ValidationFailed
from app.db.models import Deployment, DeploymentStatus
from app.services.registry import kind as model_kind
from app.services.registry import versions as registry
from app.services.serving import control as deployment_control
from app.services.serving import deployments, reconcile, targets
from app.services.serving import stats as serving_stats
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect, rollback
from app.web.rendering import render

router = APIRouter(prefix="/deployments", route_class=PageRoute, include_in_schema=False)


def examples(base_url: str, name: str) -> dict[str, str]:
    """Copyable calls of a deployment: curl and the openai Python package."""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello!"}]})
    curl = (
        f"curl {base_url}/chat/completions \\\n"
        '  -H "Authorization: Bearer $LLMIDE_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )
    python = (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key=os.environ["LLMIDE_TOKEN"])\n'
        "answer = client.chat.completions.create(\n"
        f'    model="{name}",\n'
        '    messages=[{"role": "user", "content": "Hello!"}],\n'
        ")\n"
        "print(answer.choices[0].message.content)"
    )
    return {"curl": curl, "python": "import os\n" + python}


def predict_examples(origin: str, deployment_id: int, *, entities: bool = False) -> dict[str, str]:
    """Copyable calls of a classifier deployment: its /predict, with curl and Python (for an
    entity model, the spans it answers: label, score and character offsets)."""
    url = f"{origin}/api/v1/deployments/{deployment_id}/predict"
    sample = (
        "李明在北京大学读书。 Ada Lovelace lived in London." if entities else "a text to classify"
    )
    body = json.dumps({"inputs": [sample]}, ensure_ascii=False)
    show = (
        'for prediction in answer.json()["predictions"]:\n'
        '    for entity in prediction["entities"]:\n'
        '        print(entity["label"], entity["start"], entity["end"], entity["text"], '
        'entity["score"])'
        if entities
        else 'for prediction in answer.json()["predictions"]:\n'
        '    print(prediction["label"], prediction["scores"])'
    )
    curl = (
        f"curl {url} \\\n"
        '  -H "Authorization: Bearer $LLMIDE_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )
    python = (
        "import os\n\nimport httpx\n\n"
        "answer = httpx.post(\n"
        f'    "{url}",\n'
        '    headers={"Authorization": f"Bearer {os.environ[\'LLMIDE_TOKEN\']}"},\n'
        f"    json={body},\n"
        ")\n"
        "answer.raise_for_status()\n" + show
    )
    return {"curl": curl, "python": python, "kind": "entities" if entities else "predict"}


def deployments_context(
    request: Request,
    session: Session,
    pc: PageContext,
    rows: list[Deployment],
    loaded: list[dict] | None,
) -> dict[str, Any]:
    origin = str(request.base_url).rstrip("/")
    base_url = origin + "/v1"
    classifiers = {d.id for d in rows if model_kind.is_classifier(d.model_version)}
    entity_models = {d.id for d in rows if model_kind.is_token_classifier(d.model_version)}
    return {
        "deployments": rows,
        "server_up": loaded is not None,
        # Poll while something is loading or switching and there is a server to ask.
        "polling": loaded is not None
        and any(
            d.status == DeploymentStatus.loading or d.pending_model_version_id is not None
            for d in rows
        ),
        "stats": serving_stats.stats_by_deployment(rows, loaded),
        "versions": registry.list_versions(session=session, ctx=pc.ctx),
        "base_url": base_url,
        "classifiers": classifiers,
        "examples": {
            d.id: predict_examples(origin, d.id, entities=d.id in entity_models)
            if d.id in classifiers
            else examples(base_url, d.name or d.model_version.serving_name)
            for d in rows
        },
    }


def _deployments_page(
    request: Request,
    session: Session,
    pc: PageContext,
    loaded: list[dict] | None,
    error: str | None = None,
    status_code: int = 200,
) -> tuple[Response, reconcile.Actions]:
    rows = deployments.list_for_workspace(session=session, ctx=pc.ctx)
    actions = reconcile.apply_server_status(session=session, deployments=rows, loaded=loaded)
    context = deployments_context(request, session, pc, rows, loaded)
    response = render(
        request,
        "deployments.html",
        {**context, "deploy_error": error},
        block="deployments_table",
        status_code=status_code,
    )
    return response, actions


@router.get("")
async def deployment_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    loaded = await reconcile.loaded_models()
    response, actions = await run_in_threadpool(_deployments_page, request, session, pc, loaded)
    await reconcile.perform(actions)
    return response


@router.post("/{deployment_id}/stop", dependencies=[CSRF])
async def stop_deployment(
    deployment_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    deployment = await run_in_threadpool(
        deployments.mark_stopping, session=session, ctx=pc.ctx, deployment_id=deployment_id
    )
    await deployment_control.unload(deployment)
    return redirect(request, "/deployments")


async def _page_with_error(
    request: Request, session: Session, pc: PageContext, exc: DomainError
) -> Response:
    rollback(request)
    loaded = await reconcile.loaded_models()
    response, _ = await run_in_threadpool(
        _deployments_page, request, session, pc, loaded, exc.message, exc.status_code
    )
    return response


def _optional_tokens(value: str) -> int | None:
    """The form's max new tokens: empty means "from the model's context"."""
    if not value.strip():
        return None
    try:
        tokens = int(value)
    except ValueError:
        raise ValidationFailed(
            "max new tokens must be a whole number", param="max_new_tokens"
        ) from None
    if not 1 <= tokens <= 4096:
        raise ValidationFailed("max new tokens must be between 1 and 4096", param="max_new_tokens")
    return tokens


@router.post("", dependencies=[CSRF])
async def create_deployment(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model_version_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    name: Annotated[str, Form(max_length=255)] = "",
    replicas: Annotated[int, Form(ge=1, le=8)] = 1,
    max_batch_size: Annotated[int, Form(ge=1, le=64)] = 8,
    # Empty: derived from the model's context (targets.default_max_new_tokens).
    max_new_tokens: Annotated[str, Form(max_length=8)] = "",
    temperature: Annotated[float, Form(ge=0, le=2)] = 0.7,
    top_p: Annotated[float, Form(gt=0, le=1)] = 1.0,
) -> Response:
    """Deploy a version with its serving settings in one click."""
    try:
        settings = targets.DeploymentSettings(
            replicas=replicas,
            max_batch_size=max_batch_size,
            max_new_tokens=_optional_tokens(max_new_tokens),
            temperature=temperature,
            top_p=top_p,
        )
        await deployment_control.deploy(
            session=session,
            ctx=pc.ctx,
            version_id=model_version_id,
            name=name.strip() or None,
            settings=settings,
        )
    except Forbidden:
        raise
    except DomainError as exc:
        return await _page_with_error(request, session, pc, exc)
    return redirect(request, "/deployments")


@router.post("/{deployment_id}/scale", dependencies=[CSRF])
async def scale_deployment(
    deployment_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    replicas: Annotated[int, Form(ge=1, le=8)],
    max_batch_size: Annotated[int | None, Form(ge=1, le=64)] = None,
) -> Response:
    try:
        await deployment_control.scale(
            session=session,
            ctx=pc.ctx,
            deployment_id=deployment_id,
            replicas=replicas,
            max_batch_size=max_batch_size,
        )
    except (Forbidden, NotFound):
        raise
    except DomainError as exc:
        return await _page_with_error(request, session, pc, exc)
    return redirect(request, "/deployments")


@router.post("/{deployment_id}/redeploy", dependencies=[CSRF])
async def redeploy_deployment(
    deployment_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    model_version_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
) -> Response:
    try:
        await deployment_control.redeploy(
            session=session, ctx=pc.ctx, deployment_id=deployment_id, version_id=model_version_id
        )
    except (Forbidden, NotFound):
        raise
    except DomainError as exc:
        return await _page_with_error(request, session, pc, exc)
    return redirect(request, "/deployments")
