"""What chat completions and completions share: resolving `model`, calling the inference
server, and relaying its stream as OpenAI server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.core.errors import DomainError
from app.openai.common import inference_error
from app.openai.schemas import Usage
from app.services import deployments, inference_client
from app.services.deployments import ServingTarget
from app.services.workspaces import WorkspaceContext

INFERENCE_ERRORS = (inference_client.InferenceUnavailable, inference_client.InferenceError)
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    503: "service_unavailable_error",
}

# Turns one inference event ({"delta"} or the final {"finish_reason", ...}) into chunks.
ChunkMaker = Callable[[dict[str, Any]], list[dict[str, Any]]]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(result: dict[str, Any]) -> Usage:
    prompt, completion = int(result["prompt_tokens"]), int(result["completion_tokens"])
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


async def resolve_target(*, session: Session, ctx: WorkspaceContext, model: str) -> ServingTarget:
    def resolve() -> ServingTarget:
        target = deployments.resolve_model(session=session, ctx=ctx, name=model)
        # Give the database connection back now: a generation can take minutes.
        session.commit()
        return target

    return await run_in_threadpool(resolve)


def sampling(
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
) -> dict[str, Any]:
    """The inference client's parameters; unset ones are left to the server's defaults."""
    params = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": [stop] if isinstance(stop, str) else stop,
        "seed": seed,
    }
    return {key: value for key, value in params.items() if value is not None}


async def generate(target: ServingTarget, **params: Any) -> dict[str, Any]:
    try:
        return await inference_client.generate(target.key, target.path, **params)
    except INFERENCE_ERRORS as exc:
        raise inference_error(exc) from exc


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _error_event(error: DomainError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(error.status_code, "api_error"),
            "param": error.param,
            "code": error.code,
        }
    }


async def stream(
    target: ServingTarget,
    *,
    opening: list[dict[str, Any]],
    on_event: ChunkMaker,
    **params: Any,
) -> StreamingResponse:
    """An SSE response: `opening` chunks, then `on_event`'s chunks per event, then [DONE].

    The first event is awaited before answering, so an unreachable server or a refused
    request still gets a proper error status; a failure after that becomes an error event.
    """
    upstream = inference_client.generate_stream(target.key, target.path, **params)
    try:
        first = await anext(upstream, None)
    except INFERENCE_ERRORS as exc:
        raise inference_error(exc) from exc

    async def events() -> AsyncIterator[str]:
        try:
            for chunk in opening:
                yield _sse(chunk)
            event = first
            while event is not None:
                for chunk in on_event(event):
                    yield _sse(chunk)
                event = await anext(upstream, None)
        except INFERENCE_ERRORS as exc:
            yield _sse(_error_event(inference_error(exc)))
            return
        finally:
            # Closing the upstream stream stops the generation (also when the client left).
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
