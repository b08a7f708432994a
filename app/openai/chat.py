"""OpenAI `chat.completions`: a chat with a registered model version, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation
from app.openai.schemas import ChatChoice, ChatCompletion, ChatCompletionCreate, ChatMessageOut

router = APIRouter(prefix="/v1/chat/completions", tags=["openai: chat"])


@router.post(
    "",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true"}},
)
async def create_chat_completion(
    body: ChatCompletionCreate, session: SessionDep, ctx: Workspace
) -> ChatCompletion | StreamingResponse:
    body.check_supported()
    messages = body.plain_messages()
    target = await generation.resolve_target(session=session, ctx=ctx, model=body.model)
    params = generation.sampling(
        max_tokens=body.token_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop,
        seed=body.seed,
    )
    completion_id, created = generation.new_id("chatcmpl"), generation.now()
    if not body.stream:
        result = await generation.generate(target, messages=messages, **params)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                ChatChoice(
                    message=ChatMessageOut(content=result["text"]),
                    finish_reason=result["finish_reason"],
                )
            ],
            usage=generation.usage(result),
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

    def choice(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def on_event(event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            return [chunk([choice({"content": event["delta"]})])] if event.get("delta") else []
        chunks = [chunk([choice({}, event["finish_reason"])])]
        if body.include_usage:
            chunks.append(chunk([], usage=generation.usage(event).model_dump()))
        return chunks

    return await generation.stream(
        target,
        opening=[chunk([choice({"role": "assistant", "content": ""})])],
        on_event=on_event,
        messages=messages,
        **params,
    )
