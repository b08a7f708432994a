"""OpenAI `chat.completions`: a chat with a registered model version, whole or streamed.

Beyond sampling: logprobs with top_logprobs, response_format (json_object, json_schema)
enforced by the engine's grammar, tools with tool_choice (auto, none, required, a named
function) and tool_calls in whole and streamed replies (app/openai/tools.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation, tools
from app.openai.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionCreate,
    ChatLogprobs,
    ChatMessageOut,
    ToolCall,
)
from app.services.serving import metrics as serving_metrics

router = APIRouter(prefix="/v1/chat/completions", tags=["openai: chat"])


def _response_format(body: ChatCompletionCreate, plan: tools.ToolPlan) -> dict[str, Any] | None:
    """The inference server's constraint: the forced tool call's, else response_format's."""
    if plan.schema is not None:
        return {"type": "json_schema", "json_schema": plan.schema}
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    assert fmt.json_schema is not None  # checked by check_supported
    return {"type": "json_schema", "json_schema": fmt.json_schema.schema_}


def _logprobs(body: ChatCompletionCreate, result: dict[str, Any]) -> ChatLogprobs | None:
    if not body.logprobs:
        return None
    return ChatLogprobs(content=result.get("logprobs") or [])


def _finish(reason: str, calls: list[dict[str, Any]]) -> str:
    return "tool_calls" if calls and reason == "stop" else reason


@router.post(
    "",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true"}},
)
async def create_chat_completion(
    body: ChatCompletionCreate, session: SessionDep, ctx: Workspace
) -> ChatCompletion | StreamingResponse:
    target = await generation.resolve_target(session=session, ctx=ctx, model=body.model)
    # What the web refuses is counted as the deployment's rejected requests (dashboard).
    with serving_metrics.rejections(target):
        body.check_supported()
        messages = body.plain_messages()
        plan = tools.plan(body)
        params = generation.sampling(
            target,
            max_tokens=body.token_limit,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.token_bias(),
            logprobs=body.logprobs or None,
            top_logprobs=body.top_logprobs if body.logprobs else None,
            response_format=_response_format(body, plan),
            tools=plan.offered,
        )
    n = body.n or 1
    completion_id, created = generation.new_id("chatcmpl"), generation.now()
    if not body.stream:
        results = await generation.generate(target, n, messages=messages, **params)
        choices = []
        for index, result in enumerate(results):
            content, calls = tools.parse(result["text"], plan)
            choices.append(
                ChatChoice(
                    index=index,
                    message=ChatMessageOut(
                        content=content,
                        tool_calls=[ToolCall.model_validate(c) for c in calls] or None,
                    ),
                    finish_reason=_finish(result["finish_reason"], calls),  # type: ignore[arg-type]
                    logprobs=_logprobs(body, result),
                )
            )
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=choices,
            usage=generation.usage(*results),
        )

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": choices,
            **extra,
        }

    def choice(
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict:
        return {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }

    finals: list[dict[str, Any]] = []
    # Per choice: text held back while it may still be a tool call, and whether it was.
    held = [""] * n
    holding = [plan.mode != "off"] * n
    logprobs_sent = [0] * n  # entries streamed so far; the finishing chunk has the rest

    def logprobs_of(index: int, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if not body.logprobs:
            return None
        logprobs_sent[index] += len(entries or [])
        return {"content": entries or [], "refusal": None}

    def on_event(index: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            delta = event.get("delta")
            if not delta:
                return []
            if holding[index]:
                held[index] += delta
                if plan.mode == "forced" or tools.may_be_call(held[index]):
                    return []
                holding[index], delta, held[index] = False, held[index], ""
            # With tools in play, held text would put entries out of order: all at the end.
            entries = event.get("logprobs") if plan.mode == "off" else None
            logprobs = logprobs_of(index, entries) if entries else None
            return [chunk([choice(index, {"content": delta}, None, logprobs)])]
        finals.append(event)
        chunks = []
        calls: list[dict[str, Any]] = []
        if holding[index]:
            content, calls = tools.parse(held[index], plan)
            if calls:
                chunks.append(chunk([choice(index, {"tool_calls": tools.chunk_calls(calls)})]))
            if content:
                chunks.append(chunk([choice(index, {"content": content})]))
        rest = (event.get("logprobs") or [])[logprobs_sent[index] :]
        chunks.append(
            chunk(
                [
                    choice(
                        index,
                        {},
                        _finish(event["finish_reason"], calls),
                        logprobs_of(index, rest),
                    )
                ]
            )
        )
        if body.include_usage and len(finals) == n:
            chunks.append(chunk([], usage=generation.usage(*finals).model_dump()))
        return chunks

    return await generation.stream(
        target,
        n=n,
        opening=[chunk([choice(i, {"role": "assistant", "content": ""}) for i in range(n)])],
        on_event=on_event,
        messages=messages,
        **params,
    )
