"""OpenAI `completions` (legacy text completion): continue prompts, whole or streamed.

A request may carry several prompts (strings or token-id arrays); choice `i * n + j` is the
j-th of n completions of prompt i. `logprobs: k` gives each token's log-probability and the k
most likely alternatives; with `echo` the prompt comes back before the completion, its tokens'
log-probabilities included, and `max_tokens: 0` scores a prompt without generating (what
lm-evaluation-harness's multiple-choice tasks need).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.openai import generation
from app.openai.schemas import (
    Completion,
    CompletionChoice,
    CompletionCreate,
    CompletionLogprobs,
)
from app.services.serving import metrics as serving_metrics

router = APIRouter(prefix="/v1/completions", tags=["openai: completions"])


def _prompt_text(prompt: str | list[int], result: dict[str, Any]) -> str:
    """The prompt as text: as sent, or a token array's tokens joined (from prompt_logprobs)."""
    if isinstance(prompt, str):
        return prompt
    pieces = bytes(b for entry in result.get("prompt_logprobs") or [] for b in entry["bytes"])
    return pieces.decode("utf-8", "replace")


def completion_logprobs(
    body: CompletionCreate, prompt: str | list[int], result: dict[str, Any]
) -> CompletionLogprobs | None:
    """OpenAI's legacy logprobs object: tokens, their logprobs, top alternatives, offsets."""
    if body.logprobs is None:
        return None
    entries = list(result.get("prompt_logprobs") or []) if body.echo else []
    entries += result.get("logprobs") or []
    offset = 0 if body.echo else len(_prompt_text(prompt, result))
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return CompletionLogprobs(
        tokens=[e["token"] for e in entries],
        token_logprobs=[e["logprob"] for e in entries],
        top_logprobs=[
            None if e["logprob"] is None else {t["token"]: t["logprob"] for t in e["top_logprobs"]}
            for e in entries
        ],
        text_offset=offsets,
    )


def completion_text(body: CompletionCreate, prompt: str | list[int], result: dict) -> str:
    return (_prompt_text(prompt, result) if body.echo else "") + result["text"]


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
        prompts = body.prompts()
        params = generation.sampling(
            target,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.token_bias(),
            logprobs=body.logprobs is not None or None,
            top_logprobs=body.logprobs or None,
            prompt_logprobs=(body.echo and body.logprobs is not None) or None,
        )
    n = body.n or 1
    choices: list[dict[str, Any]] = []
    for prompt in prompts:
        given: dict[str, Any] = {"prompt": prompt}
        if not isinstance(prompt, str):
            # An echoed token array is turned back into text from its tokens' entries.
            given = {"prompt_ids": prompt, **({"prompt_logprobs": True} if body.echo else {})}
        choices += generation.fan_out(n, {**params, **given})
    completion_id, created = generation.new_id("cmpl"), generation.now()
    if not body.stream:
        results = await generation.generate(target, choices=choices)
        return Completion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                CompletionChoice(
                    index=index,
                    text=completion_text(body, prompts[index // n], result),
                    finish_reason=result["finish_reason"],
                    logprobs=completion_logprobs(body, prompts[index // n], result),
                )
                for index, result in enumerate(results)
            ],
            usage=generation.usage(*results, per_prompt=n),
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

    def choice(
        index: int, text: str, finish_reason: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    finals: list[dict[str, Any] | None] = [None] * len(choices)
    echoed = [False] * len(choices)
    pending = [""] * len(choices)

    def echo_first(index: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The echoed prompt, once, before the choice's first text (it needs the prompt's
        tokens for a token array, which come with the final event)."""
        if not body.echo or echoed[index]:
            return []
        prompt = prompts[index // n]
        if not isinstance(prompt, str) and "finish_reason" not in event:
            return []
        echoed[index] = True
        return [chunk([choice(index, _prompt_text(prompt, event))])]

    def on_event(index: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "finish_reason" not in event:
            if not event.get("delta"):
                return []
            out = echo_first(index, event)
            if body.echo and not echoed[index]:
                pending[index] += event["delta"]  # a token array's echo waits for its tokens
                return []
            return [*out, chunk([choice(index, event["delta"])])]
        finals[index] = event
        prompt = prompts[index // n]
        logprobs = completion_logprobs(body, prompt, event)
        chunks = echo_first(index, event)
        if pending[index]:
            chunks.append(chunk([choice(index, pending[index])]))
        chunks.append(
            chunk(
                [
                    choice(
                        index,
                        "",
                        event["finish_reason"],
                        logprobs.model_dump() if logprobs is not None else None,
                    )
                ]
            )
        )
        done = [f for f in finals if f is not None]
        if body.include_usage and len(done) == len(finals):
            chunks.append(chunk([], usage=generation.usage(*done, per_prompt=n).model_dump()))
        return chunks

    return await generation.stream(target, opening=[], on_event=on_event, choices=choices)
