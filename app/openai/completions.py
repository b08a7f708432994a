"""OpenAI `completions` (legacy text completion): continue a prompt, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation
from app.openai.schemas import Completion, CompletionChoice, CompletionCreate
from app.services import serving_metrics

router = APIRouter(prefix="/v1/completions", tags=["openai: completions"])


@router.post(
    "",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true"}},
)
async def create_completion(
    body: CompletionCreate, session: SessionDep, ctx: Workspace
) -> Completion | StreamingResponse:
    target = await generation.resolve_target(session=session, ctx=ctx, model=body.model)
    # What the web refuses is counted as the deployment's rejected requests (dashboard).
    with serving_metrics.rejections(target):
        body.check_supported()
        prompt = body.prompt_text()
        params = generation.sampling(
            target,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            seed=body.seed,
        )
    n = body.n or 1
    completion_id, created = generation.new_id("cmpl"), generation.now()
    if not body.stream:
        results = await generation.generate(target, n, prompt=prompt, **params)
        return Completion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                CompletionChoice(
                    index=index, text=result["text"], finish_reason=result["finish_reason"]
                )
                for index, result in enumerate(results)
            ],
            usage=generation.usage(*results),
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

    def choice(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    finals: list[dict[str, Any]] = []

    def on_event(index: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            return [chunk([choice(index, event["delta"])])] if event.get("delta") else []
        finals.append(event)
        chunks = [chunk([choice(index, "", event["finish_reason"])])]
        if body.include_usage and len(finals) == n:
            chunks.append(chunk([], usage=generation.usage(*finals).model_dump()))
        return chunks

    return await generation.stream(
        target, n=n, opening=[], on_event=on_event, prompt=prompt, **params
    )
