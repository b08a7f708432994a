"""OpenAI `completions` (legacy text completion): continue a prompt, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation
from app.openai.schemas import Completion, CompletionChoice, CompletionCreate

router = APIRouter(prefix="/v1/completions", tags=["openai: completions"])


@router.post(
    "",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true"}},
)
async def create_completion(
    body: CompletionCreate, session: SessionDep, ctx: Workspace
) -> Completion | StreamingResponse:
    body.check_supported()
    prompt = body.prompt_text()
    target = await generation.resolve_target(session=session, ctx=ctx, model=body.model)
    params = generation.sampling(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop,
        seed=body.seed,
    )
    completion_id, created = generation.new_id("cmpl"), generation.now()
    if not body.stream:
        result = await generation.generate(target, prompt=prompt, **params)
        return Completion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[CompletionChoice(text=result["text"], finish_reason=result["finish_reason"])],
            usage=generation.usage(result),
        )

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            **extra,
        }

    def on_event(event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            if not event.get("delta"):
                return []
            return [
                chunk(
                    [{"index": 0, "text": event["delta"], "logprobs": None, "finish_reason": None}]
                )
            ]
        chunks = [
            chunk(
                [
                    {
                        "index": 0,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": event["finish_reason"],
                    }
                ]
            )
        ]
        if body.include_usage:
            chunks.append(chunk([], usage=generation.usage(event).model_dump()))
        return chunks

    return await generation.stream(target, opening=[], on_event=on_event, prompt=prompt, **params)
