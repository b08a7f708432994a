"""What chat completions and completions share: resolving `model`, calling the inference
server, and relaying its stream as OpenAI server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.core.errors import DomainError, ValidationFailed
from app.openai.common import inference_error
from app.openai.schemas import PromptTokensDetails, Usage
from app.services.serving import inference_client, routing
from app.services.serving import metrics as serving_metrics
from app.services.serving.targets import ServingTarget
from app.services.workspaces.access import WorkspaceContext

INFERENCE_ERRORS = (inference_client.InferenceUnavailable, inference_client.InferenceError)
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    503: "service_unavailable_error",
}

# Turns choice i's inference event ({"delta"} or the final {"finish_reason", ...}) into chunks.
ChunkMaker = Callable[[int, dict[str, Any]], list[dict[str, Any]]]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(*results: dict[str, Any], per_prompt: int | None = None) -> Usage:
    """Token usage of one or n choices (the prompt is counted once, as OpenAI does); with
    several prompts, `per_prompt` (n) choices share each prompt."""
    share = per_prompt or len(results)
    prompt = sum(int(r["prompt_tokens"]) for r in results[::share])
    cached = sum(int(r.get("cached_tokens") or 0) for r in results[::share])
    completion = sum(int(r["completion_tokens"]) for r in results)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


async def resolve_target(*, session: Session, ctx: WorkspaceContext, model: str) -> ServingTarget:
    def resolve() -> ServingTarget:
        target = routing.resolve_model(session=session, ctx=ctx, name=model)
        # Give the database connection back now: a generation can take minutes.
        session.commit()
        return target

    return await run_in_threadpool(resolve)


def sampling(
    target: ServingTarget,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """The inference client's parameters: the request's, else the deployment's defaults.

    A deployment's max new tokens is also its limit: asking for more is a 400 naming
    max_tokens. Without max_tokens the inference server generates what fits after the prompt
    in the model's context, up to the deployment's max new tokens (max_tokens_cap); unset
    parameters of an undeployed version are left to the server's defaults. `extra`
    (penalties, logit_bias, logprobs, response_format, tools ...) goes as given when set.
    """
    chosen = target.settings
    cap = None
    if chosen is not None:
        # A deployed target's limit is always set (its column has a default); only settings
        # still being chosen leave it None.
        cap = chosen.max_new_tokens
        if max_tokens is not None and cap is not None and max_tokens > cap:
            raise ValidationFailed(
                f"max_tokens={max_tokens} is above this deployment's limit of {cap} new tokens",
                param="max_tokens",
            )
        temperature = chosen.temperature if temperature is None else temperature
        top_p = chosen.top_p if top_p is None else top_p
    params = {
        "max_tokens": max_tokens,
        "max_tokens_cap": cap if max_tokens is None else None,
        "temperature": temperature,
        "top_p": top_p,
        "stop": [stop] if isinstance(stop, str) else stop,
        "seed": seed,
        **extra,
        **target.load_options,
    }
    return {key: value for key, value in params.items() if value is not None}


def _choice_params(params: dict[str, Any], index: int) -> dict[str, Any]:
    """Choice `index` of n: a seeded request gets seed+index, so choices differ reproducibly."""
    if index and params.get("seed") is not None:
        return {**params, "seed": params["seed"] + index}
    return params


def fan_out(n: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The n choices' requests of one prompt."""
    return [_choice_params(params, i) for i in range(n)]


async def generate(
    target: ServingTarget,
    n: int = 1,
    *,
    choices: list[dict[str, Any]] | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """n whole completions (sent together, so the server batches them); one result per choice.

    `choices` gives each choice's request instead (several prompts, each n times)."""
    requests = choices if choices is not None else fan_out(n, params)
    timer = serving_metrics.RequestTimer(serving_metrics.label_for(target))
    try:
        results = await asyncio.gather(
            *(inference_client.generate(target.key, target.path, **r) for r in requests)
        )
    except INFERENCE_ERRORS as exc:
        error = inference_error(exc)
        timer.done(error.status_code)
        raise error from exc
    timer.first_token()
    timer.done(200, sum(int(r["completion_tokens"]) for r in results))
    return list(results)


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


async def _merged(
    target: ServingTarget, requests: list[dict[str, Any]]
) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    """Events of n upstream streams as (choice index, event), in arrival order."""
    n = len(requests)
    upstreams = [inference_client.generate_stream(target.key, target.path, **r) for r in requests]
    if n == 1:
        try:
            async for event in upstreams[0]:
                yield 0, event
        finally:
            with anyio.CancelScope(shield=True):
                await upstreams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, dict[str, Any] | BaseException | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for event in upstreams[index]:
                await queue.put((index, event))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))
        else:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    try:
        remaining = n
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            for upstream in upstreams:
                await upstream.aclose()


async def stream(
    target: ServingTarget,
    *,
    n: int = 1,
    opening: list[dict[str, Any]],
    on_event: ChunkMaker,
    choices: list[dict[str, Any]] | None = None,
    **params: Any,
) -> StreamingResponse:
    """An SSE response: `opening` chunks, then `on_event`'s chunks per event, then [DONE].

    `on_event(index, event)` turns choice `index`'s event into chunks. The first event is
    awaited before answering, so an unreachable server or a refused request still gets a
    proper error status; a failure after that becomes an error event. A client that goes away
    closes the upstream streams, which cancels their generation in the inference server.
    """
    timer = serving_metrics.RequestTimer(serving_metrics.label_for(target))
    upstream = _merged(target, choices if choices is not None else fan_out(n, params))
    try:
        first = await anext(upstream, None)
    except INFERENCE_ERRORS as exc:
        error = inference_error(exc)
        timer.done(error.status_code)
        raise error from exc

    async def events() -> AsyncIterator[str]:
        tokens = 0
        try:
            for chunk in opening:
                yield _sse(chunk)
            item = first
            while item is not None:
                index, event = item
                if event.get("delta"):
                    timer.first_token()
                tokens += int(event.get("completion_tokens", 0))
                for chunk in on_event(index, event):
                    yield _sse(chunk)
                item = await anext(upstream, None)
            timer.done(200, tokens)
        except INFERENCE_ERRORS as exc:
            error = inference_error(exc)
            timer.done(error.status_code, tokens)
            yield _sse(_error_event(error))
            return
        finally:
            # Closing the upstream streams stops the generation (also when the client left).
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            timer.done(499, tokens)  # no-op after a normal end; 499: the client went away
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
