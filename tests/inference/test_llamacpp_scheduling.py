"""How the llama.cpp engine fills its decode steps, checked on the engine itself (the packaged
SmolLM2 GGUF, real llama.cpp, no server): new prompts go first in a short step of their own,
running streams are never held back more than PROMPTS_FIRST_STEPS steps in a row, and
identical prompts arriving together compute their last token once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.inference.test_llamacpp import COUNTING, packaged_gguf
from workers.inference.generation import GenerationResult, Job, PreparedRequest, SamplingParams
from workers.inference.llamacpp_backend import (
    PROMPTS_FIRST_STEPS,
    LlamaCppEngine,
    LlamaCppTokenizer,
    load_llamacpp,
)


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[LlamaCppEngine, LlamaCppTokenizer]]:
    loaded, tokenizer, _ = load_llamacpp(
        "scheduling", packaged_gguf(), threads=2, kv_tokens=4096, slots=16, limit=lambda: 16
    )
    try:
        yield loaded, tokenizer
    finally:
        loaded.close()


def steps_since(loaded: LlamaCppEngine, step: int) -> list[tuple[int, int]]:
    """(decoding sequences, prompt tokens) of each step from `step` on."""
    return [(decoded, prompt) for index, decoded, prompt in loaded.recent_steps if index >= step]


def new_job(tokenizer: LlamaCppTokenizer, prompt: str, max_tokens: int) -> Job:
    ids = tokenizer(prompt)["input_ids"]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Job(PreparedRequest(ids, params), asyncio.get_running_loop(), asyncio.Queue())


async def first_piece(job: Job) -> None:
    item = await asyncio.wait_for(job.events.get(), 120)
    assert isinstance(item, str), item


async def result_of(job: Job) -> GenerationResult:
    while True:
        item: Any = await asyncio.wait_for(job.events.get(), 120)
        if isinstance(item, GenerationResult):
            return item
        assert not isinstance(item, BaseException), item


def test_a_new_prompt_goes_first_while_a_stream_decodes_and_the_stream_resumes_next(
    engine: tuple[LlamaCppEngine, LlamaCppTokenizer],
) -> None:
    loaded, tokenizer = engine

    async def scenario() -> tuple[list[tuple[int, int]], GenerationResult, int]:
        stream = new_job(tokenizer, COUNTING, 40)
        loaded.submit(stream)
        await first_piece(stream)
        await first_piece(stream)  # decoding now, one token a step
        since = loaded.steps
        newcomer = new_job(tokenizer, "Name three colours of the rainbow.", 3)
        loaded.submit(newcomer)
        answer = await result_of(newcomer)
        steps = steps_since(loaded, since)
        await result_of(stream)
        return steps, answer, len(newcomer.request.input_ids)

    steps, answer, prompt_tokens = asyncio.run(scenario())
    assert answer.completion_tokens == 3
    fresh = prompt_tokens - answer.cached_tokens
    # The newcomer's prompt took a step without the stream's token, and the stream's next
    # token came in the step right after it.
    at = steps.index((0, fresh))
    assert steps[at + 1][0] >= 1, steps


def test_running_streams_wait_at_most_prompts_first_steps_in_a_row(
    engine: tuple[LlamaCppEngine, LlamaCppTokenizer],
) -> None:
    loaded, tokenizer = engine

    async def scenario() -> list[tuple[int, int]]:
        stream = new_job(tokenizer, COUNTING, 80)
        loaded.submit(stream)
        await first_piece(stream)
        since = loaded.steps
        # A newcomer at every step: each would like to go first.
        newcomers = []
        for index in range(10):
            step = loaded.steps
            while loaded.steps == step:
                await asyncio.sleep(0.0005)
            newcomer = new_job(tokenizer, f"Question {index}: which planet is the {index}th?", 2)
            loaded.submit(newcomer)
            newcomers.append(newcomer)
        for newcomer in newcomers:
            await result_of(newcomer)
        steps = steps_since(loaded, since)
        await result_of(stream)
        return steps

    steps = asyncio.run(scenario())
    held, longest = 0, 0
    for decoded, _prompt in steps:
        held = held + 1 if decoded == 0 else 0
        longest = max(longest, held)
    assert longest == PROMPTS_FIRST_STEPS, f"{steps}"


def test_identical_prompts_submitted_together_compute_their_last_token_once(
    engine: tuple[LlamaCppEngine, LlamaCppTokenizer],
) -> None:
    loaded, tokenizer = engine
    prompt = "The lighthouse keeper wrote in his log every night about the storms and the ships"

    async def scenario() -> tuple[GenerationResult, list[GenerationResult], list[tuple[int, int]]]:
        alone = new_job(tokenizer, prompt, 6)
        loaded.submit(alone)
        first = await result_of(alone)  # its cells stay cached for the ones below
        since = loaded.steps
        jobs = [new_job(tokenizer, prompt, 6) for _ in range(4)]
        # All four in the engine's queue before its thread looks (its lock is re-entrant), as
        # four requests arriving during one step would be.
        with loaded._cond:
            for job in jobs:
                loaded.submit(job)
        results = [await result_of(job) for job in jobs]
        return first, results, steps_since(loaded, since)

    first, together, steps = asyncio.run(scenario())
    prompt_tokens = first.prompt_tokens
    # All four take the prompt but its last token from the cache; one computes that token for
    # all four, the three others copy its cell.
    assert sorted(r.cached_tokens for r in together) == [prompt_tokens - 1] + [prompt_tokens] * 3
    assert steps[0] == (0, 1), steps
    assert {r.text for r in together} == {first.text}
