"""The playground: pick a model, chat with it, answers streamed token by token (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from app.core.errors import DomainError
from app.db.models import DeploymentStatus
from app.services import deployments, inference_client, registry
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
    max_tokens: int = Field(128, ge=1, le=4096)


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
    # Ready deployments first: they answer without a load.
    versions.sort(key=lambda v: (v.id not in deployed, -v.id))
    # Deployments by their own serving name first; a name routes to the live version.
    named = [d for d in live if d.name]
    deployment_names = {d.name for d in named}
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
        },
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
    try:
        target = await run_in_threadpool(
            deployments.resolve_model, session=session, ctx=pc.ctx, name=body.model
        )
    except DomainError as exc:
        return StreamingResponse(
            _single_error(exc.message), media_type="text/event-stream", headers=SSE_HEADERS
        )
    messages = [m.model_dump() for m in body.messages]

    async def events() -> AsyncIterator[str]:
        try:
            async for event in inference_client.generate_stream(
                target.key,
                target.path,
                messages=messages,
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                **target.load_options,
            ):
                yield _sse(event)
        except inference_client.InferenceUnavailable as exc:
            yield _sse({"error": str(exc)})
        except inference_client.InferenceError as exc:
            yield _sse({"error": f"the inference server answered {exc.status_code}: {exc.detail}"})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
