"""The playground: pick a model, chat with it, answers streamed token by token (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from app.core.errors import DomainError
from app.db.models import Deployment, DeploymentStatus, ModelVersion
from app.services.registry import kind as model_kind
from app.services.registry import versions as registry
from app.services.serving import classifiers as serving_classifiers
from app.services.serving import deployments, inference_client, routing, targets
from app.services.serving import metrics as serving_metrics
from app.web.pages import CSRF, DbDep, PageDep, PageRoute
from app.web.rendering import render

router = APIRouter(prefix="/playground", route_class=PageRoute, include_in_schema=False)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class PlaygroundRequest(BaseModel):
    model: str = Field(min_length=1, max_length=255)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    # None: what fits after the conversation, up to the deployment's max new tokens.
    max_tokens: int | None = Field(None, ge=1, le=4096)


@router.get("")
def playground(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model: Annotated[str | None, Query(max_length=255)] = None,
    compare: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    versions = registry.list_versions(session=session, ctx=pc.ctx)
    live = [
        d
        for d in deployments.list_for_workspace(session=session, ctx=pc.ctx)
        if d.status != DeploymentStatus.stopped
    ]
    deployed = {d.model_version_id: d for d in reversed(live)}
    classifiers = _classifier_names(versions, live)
    if model is not None and model in classifiers:
        # A classifier does not chat: it gets the classifier playground (text in, labels out).
        return _classifier_page(request, classifiers, selected=model)
    # Ready deployments first: they answer without a load.
    versions.sort(key=lambda v: (v.id not in deployed, -v.id))
    # Deployments by their own serving name first; a name routes to the live version.
    # Classifiers are left out of the chat: they have their own playground.
    named = [d for d in live if d.name and d.name not in classifiers]
    deployment_names = {d.name for d in live if d.name}
    versions = [v for v in versions if v.serving_name not in classifiers]
    names = [d.name for d in named] + [
        v.serving_name for v in versions if v.serving_name not in deployment_names
    ]
    return render(
        request,
        "playground.html",
        {
            "versions": versions,
            "deployed": deployed,
            "selected": model,
            "compare": compare,
            "named": named,
            "deployment_names": deployment_names,
            "names": names,
            "classifiers": classifiers,
        },
    )


def _classifier_names(versions: list[ModelVersion], live: list[Deployment]) -> list[str]:
    """Names that route to a classifier: deployment names first, then versions' serving names."""
    kinds = {v.id: model_kind.is_classifier(v) for v in versions}
    names = [d.name for d in live if d.name and kinds.get(d.model_version_id)]
    return names + [v.serving_name for v in versions if kinds[v.id] and v.serving_name not in names]


def _classifier_page(
    request: Request,
    classifiers: list[str],
    *,
    selected: str | None,
    text: str = "",
    result: dict[str, Any] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "playground_classifier.html",
        {
            "classifiers": classifiers,
            "selected": selected,
            "text": text,
            "result": result,
            "error": error,
        },
        status_code=status_code,
        block="result",
    )


def _ranked(prediction: dict[str, Any], text: str) -> dict[str, Any]:
    """One prediction as the page shows it: the label, then every class by probability; for
    an entity model, the text cut into plain and entity segments for highlighting."""
    if "entities" in prediction:
        return {"entities": prediction["entities"], "segments": entity_segments(text, prediction)}
    scores = sorted(prediction.get("scores", {}).items(), key=lambda item: -item[1])
    return {"label": prediction.get("label"), "score": prediction.get("score"), "scores": scores}


def entity_segments(text: str, prediction: dict[str, Any]) -> list[dict[str, Any]]:
    """The text as consecutive pieces, each plain ({"text"}) or an entity ({"text", "label",
    "score"}), in order: the page highlights entities without any offset arithmetic in JS."""
    pieces: list[dict[str, Any]] = []
    at = 0
    for entity in sorted(prediction.get("entities", ()), key=lambda e: e["start"]):
        start, end = int(entity["start"]), int(entity["end"])
        if start < at or end > len(text):
            continue  # never expected (the server's spans are in range and apart)
        if start > at:
            pieces.append({"text": text[at:start]})
        pieces.append({"text": text[start:end], "label": entity["label"], "score": entity["score"]})
        at = end
    if at < len(text):
        pieces.append({"text": text[at:]})
    return pieces


@router.get("/classify")
def classifier_playground(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    versions = registry.list_versions(session=session, ctx=pc.ctx)
    live = deployments.live_for_workspace(session=session, ctx=pc.ctx)
    return _classifier_page(request, _classifier_names(versions, live), selected=model)


@router.post("/classify", dependencies=[CSRF])
async def classify(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model: Annotated[str, Form(min_length=1, max_length=255)],
    text: Annotated[str, Form(max_length=32_000)] = "",
) -> Response:
    """The classifier playground's answer: the predicted label and each class's probability,
    from the same /predict the API offers (a whole page, or the result block for htmx)."""

    def prepare() -> tuple[list[str], targets.ServingTarget | None, str | None]:
        versions = registry.list_versions(session=session, ctx=pc.ctx)
        live = deployments.live_for_workspace(session=session, ctx=pc.ctx)
        classifiers = _classifier_names(versions, live)
        if model not in classifiers:
            return classifiers, None, f"{model!r} is not a classifier in this workspace"
        if not text.strip():
            return classifiers, None, "Write a text to classify."
        try:
            target = routing.resolve_model(session=session, ctx=pc.ctx, name=model)
        except DomainError as exc:
            return classifiers, None, exc.message
        session.commit()  # give the connection back during inference
        return classifiers, target, None

    classifiers, target, error = await run_in_threadpool(prepare)
    result = None
    if target is not None:
        try:
            answer = await serving_classifiers.classify(target, text)
            result = _ranked(answer["predictions"][0], text)
        except DomainError as exc:
            error = exc.message
    return _classifier_page(
        request,
        classifiers,
        selected=model,
        text=text,
        result=result,
        error=error,
        status_code=200 if error is None else 400,
    )


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _single_error(message: str) -> AsyncIterator[str]:
    yield _sse({"error": message})
    yield _sse("[DONE]")


@router.post("/stream", dependencies=[CSRF])
async def stream_chat(
    body: PlaygroundRequest, request: Request, session: DbDep, pc: PageDep
) -> Response:
    """Server-sent events: {"delta"} per token, then {"finish_reason", ...}; errors as {"error"}.

    Errors travel inside the stream (status 200) so the chat shows them where the answer would be.
    """
    return await stream_answer(session, pc, body)


async def stream_answer(session: Any, pc: Any, body: PlaygroundRequest) -> Response:
    """The playground's streamed answer of `body.model` (also the arena's, for each side)."""
    try:
        target = await run_in_threadpool(
            routing.resolve_model, session=session, ctx=pc.ctx, name=body.model
        )
    except DomainError as exc:
        return StreamingResponse(
            _single_error(exc.message), media_type="text/event-stream", headers=SSE_HEADERS
        )
    messages = [m.model_dump() for m in body.messages]
    # A chat UI never refuses for length: the answer gets what fits (up to the deployment's
    # max new tokens and the box's value) and the oldest turns go when the history is too long.
    caps = [body.max_tokens, target.settings.max_new_tokens if target.settings else None]
    cap = min((c for c in caps if c is not None), default=None)

    async def events() -> AsyncIterator[str]:
        # Counted in the deployment's traffic like an API request.
        timer = serving_metrics.RequestTimer(serving_metrics.label_for(target))
        tokens = 0
        try:
            async for event in inference_client.generate_stream(
                target.key,
                target.path,
                messages=messages,
                max_tokens_cap=cap,
                trim_history=True,
                temperature=body.temperature,
                top_p=body.top_p,
                **target.load_options,
            ):
                if event.get("delta"):
                    timer.first_token()
                tokens += int(event.get("completion_tokens", 0))
                yield _sse(event)
            timer.done(200, tokens)
        except inference_client.InferenceUnavailable as exc:
            timer.done(503)
            yield _sse({"error": str(exc)})
        except inference_client.InferenceError as exc:
            timer.done(exc.status_code)
            yield _sse({"error": f"the inference server answered {exc.status_code}: {exc.detail}"})
        finally:
            timer.done(499, tokens)  # no-op after an end above; 499: the client went away
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
