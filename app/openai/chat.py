"""OpenAI `chat.completions`: a chat with a registered model version, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation
from app.openai.schemas import ChatChoice, ChatCompletion, ChatCompletionCreate, ChatMessageOut
from app.services import serving_metrics

router = APIRouter(prefix="/v1/chat/completions", tags=["openai: chat"])


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
        params = generation.sampling(
            target,
            max_tokens=body.token_limit,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            seed=body.seed,
        )
    n = body.n or 1
    completion_id, created = generation.new_id("chatcmpl"), generation.now()
    if not body.stream:
        results = await generation.generate(target, n, messages=messages, **params)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                ChatChoice(
                    index=index,
                    message=ChatMessageOut(content=result["text"]),
                    finish_reason=result["finish_reason"],
                )
                for index, result in enumerate(results)
            ],
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

    def choice(index: int, delta: dict[str, str], finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    finals: list[dict[str, Any]] = []

    def on_event(index: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            if not event.get("delta"):
                return []
            return [chunk([choice(index, {"content": event["delta"]})])]
        finals.append(event)
        chunks = [chunk([choice(index, {}, event["finish_reason"])])]
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
