"""vLLM as the engine behind a deployment, on a GPU machine where vllm is installed.

It plugs in where the transformers lanes do: `VLLMEngine.submit(job)` takes the same `Job`
(a PreparedRequest plus the asyncio queue its events go to) and sends the same events: text
pieces, then one GenerationResult (finish_reason, prompt and completion tokens), or an
exception. Prompt rendering, tokenising, the context check, stop-string holding in streams and
the HTTP API stay shared, so a deployment answers the same whichever engine serves it.

vLLM batches continuously (requests join and leave the running batch between decoding steps)
in its own engine process, so `replicas` and `max_batch_size` do not apply: one engine per
deployment schedules every request. vllm is imported only inside `load_vllm` and
`VLLMEngine`; everything else here is plain Python, tested without vLLM or a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.inference.generation import (
    FinishReason,
    GenerationFailed,
    GenerationResult,
    Job,
    ModelNotReady,
    PreparedRequest,
    SamplingParams,
    TokenLogprob,
    cut_at_stop,
    token_entry,
)

logger = logging.getLogger(__name__)

# How often a running request checks its cancel flag (set when its client went away).
CANCEL_POLL_S = 0.02
# How long an unloaded engine waits for its running requests before it shuts down.
CLOSE_DRAIN_S = 30.0


# --------------------------------------------------------------------------- pure translation


def vllm_sampling_kwargs(
    params: SamplingParams, stop_token_ids: Sequence[int] = ()
) -> dict[str, Any]:
    """Our OpenAI-style settings as keyword arguments for `vllm.SamplingParams`.

    Every knob that would change what the OpenAI parameters mean is set explicitly (as the
    transformers path does with its GenerationConfig): no repetition penalty, text without
    special tokens and without the stop string. `stop_token_ids` are the model's end tokens
    (`eos_token_ids`), which the engine otherwise takes from the tokenizer alone. `n` is
    always 1: the web facade fans a client's `n` out into n requests (choice i seeded with
    seed+i), for both engines alike. `output_kind` (DELTA) is added by the caller, which has
    vllm imported.
    """
    greedy = params.temperature == 0
    kwargs: dict[str, Any] = {
        "n": 1,
        # vLLM generates at least one token: with max_tokens 0 (a prompt scored) the one it
        # makes is dropped by the DeltaCollector.
        "max_tokens": max(1, params.max_tokens),
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "repetition_penalty": 1.0,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logit_bias": dict(params.logit_bias) or None,
        # vLLM's logprobs=k: the sampled token's and the k most likely (0: the sampled only).
        "logprobs": params.top_logprobs if params.logprobs else None,
        "prompt_logprobs": params.top_logprobs if params.prompt_logprobs else None,
        "stop": list(params.stop) or None,
        "stop_token_ids": list(stop_token_ids) or None,
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


def structured_kwargs(constraint: tuple[str, str] | None) -> dict[str, Any]:
    """The JSON constraint as the keyword arguments of vLLM's structured-output parameters
    (`StructuredOutputsParams` in recent vLLM, `GuidedDecodingParams` before)."""
    if constraint is None:
        return {}
    kind, schema = constraint
    if kind == "json_object":
        return {"json_object": True}
    return {"json": json.loads(schema)}


def logprob_entry(token_id: int, candidates: dict[int, Any], k: int) -> TokenLogprob:
    """One token's entry from vLLM's {token id: Logprob(logprob, rank, decoded_token)}."""
    chosen = candidates.get(token_id)
    ranked = sorted(
        (c for c in candidates.items() if c[1].rank is not None),
        key=lambda item: item[1].rank,
    )[:k]
    top = [((c.decoded_token or "").encode("utf-8"), float(c.logprob)) for _, c in ranked]
    piece = ((chosen.decoded_token if chosen else "") or "").encode("utf-8")
    return token_entry(piece, float(chosen.logprob) if chosen else None, top)


def finish_reason_of(
    vllm_reason: str | None, completion_tokens: int, max_tokens: int
) -> FinishReason:
    """vLLM's "stop" / "length" / "abort" (or None) as ours.

    A cancelled request ("abort") finishes "stop", as a cancelled row does on the transformers
    path: it ended before its limit.
    """
    if vllm_reason == "length":
        return "length"
    if vllm_reason in ("stop", "abort"):
        return "stop"
    return "length" if completion_tokens >= max_tokens else "stop"


@dataclass
class DeltaCollector:
    """Turns one request's stream of vLLM deltas (RequestOutputKind.DELTA) into our events.

    Each delta carries the new text and token ids of the request's only completion; the
    last one its finish reason. Token ids include the EOS token when the model ended the
    answer, so completion_tokens counts it, as OpenAI and the transformers path do.
    """

    request: PreparedRequest
    text: str = ""
    completion_tokens: int = 0
    vllm_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None

    def add(
        self,
        text: str,
        token_ids: Sequence[int],
        finish_reason: str | None,
        logprobs: Sequence[dict[int, Any]] | None = None,
    ) -> str:
        """Record one delta; returns the text to hand to the client now (may be empty)."""
        if self.request.params.max_tokens == 0:  # only the prompt's logprobs were asked for
            self.vllm_reason = "length"
            return ""
        self.text += text
        self.completion_tokens += len(token_ids)
        if logprobs and self.request.params.logprobs:
            k = self.request.params.top_logprobs
            for token, candidates in zip(token_ids, logprobs, strict=False):
                self.logprobs.append(logprob_entry(token, candidates, k))
        if finish_reason is not None:
            self.vllm_reason = finish_reason
        return text

    def add_prompt(self, prompt_logprobs: Sequence[dict[int, Any] | None] | None) -> None:
        """vLLM's prompt logprobs (None for the first token), once."""
        if not self.request.params.prompt_logprobs or self.prompt_logprobs is not None:
            return
        if prompt_logprobs is None:
            return
        ids = self.request.input_ids
        k = self.request.params.top_logprobs
        entries: list[TokenLogprob] = []
        for token, candidates in zip(ids, prompt_logprobs, strict=False):
            if candidates is None:
                entries.append(token_entry(b"", None))
            else:
                entries.append(logprob_entry(token, candidates, k))
        self.prompt_logprobs = entries

    def result(self) -> GenerationResult:
        # vLLM already cut at the stop string; cutting again is idempotent and guards the
        # contract (no stop string in the answer) against a version that would not.
        text, _ = cut_at_stop(self.text, self.request.params.stop)
        reason = finish_reason_of(
            self.vllm_reason, self.completion_tokens, self.request.params.max_tokens
        )
        params = self.request.params
        return GenerationResult(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(self.request.input_ids),
            completion_tokens=self.completion_tokens,
            logprobs=self.logprobs if params.logprobs else None,
            prompt_logprobs=self.prompt_logprobs if params.prompt_logprobs else None,
        )


def completion_delta(
    output: Any,
) -> tuple[str, list[int], str | None, list[dict[int, Any]] | None]:
    """(text, token ids, finish reason, logprobs) of a RequestOutput's single completion."""
    completion = output.outputs[0]
    return (
        str(completion.text or ""),
        list(completion.token_ids or ()),
        completion.finish_reason,
        getattr(completion, "logprobs", None),
    )


def engine_kwargs(directory: Path, gpu_memory_utilization: float) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs` serving the folder `directory`.

    generation_config="vllm": the checkpoint's generation_config.json (a repetition penalty,
    a top_k) must not silently change what the request's parameters mean. The memory share is
    below vLLM's 0.9 default because a redeploy loads the new version beside the old one.
    """
    return {
        "model": str(directory),
        "tokenizer": str(directory),
        "dtype": "auto",
        "gpu_memory_utilization": gpu_memory_utilization,
        "generation_config": "vllm",
        "disable_log_stats": True,
    }


def eos_token_ids(directory: Path, tokenizer_eos: int | None) -> list[int]:
    """The tokens that end an answer, as the transformers path takes them.

    generation_config.json's eos_token_id (an int or a list: chat models often add an
    end-of-turn token there), else config.json's, else the tokenizer's. The engine runs with
    generation_config="vllm", which would otherwise miss the extra ones.
    """
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((directory / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return [value]
        if isinstance(value, list) and value:
            return [int(v) for v in value]
    return [tokenizer_eos] if tokenizer_eos is not None else []


def config_context_length(directory: Path) -> int | None:
    """The context window from config.json (n_positions or max_position_embeddings)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("n_positions") or config.get("max_position_embeddings")
    return int(value) if value else None


# --------------------------------------------------------------------------- the engine (vLLM)


class VLLMEngine:
    """One vLLM AsyncLLMEngine serving one deployment, behind the lane interface.

    Requests run as tasks on the event loop of the request that submitted them (the server's
    loop); vLLM's engine core runs in its own process and batches them continuously.
    """

    def __init__(
        self,
        name: str,
        engine: Any,
        on_result: Callable[[PreparedRequest, GenerationResult], None] | None = None,
        build_inputs: Callable[[PreparedRequest, Sequence[int]], tuple[Any, Any]] | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.engine = engine
        self.on_result = on_result
        self.stop_token_ids = list(stop_token_ids)
        # (prompt, sampling params) in the engine's types; vllm_inputs unless an engine with
        # other input types is plugged in (the tests' stand-in for vLLM's engine).
        self.build_inputs = build_inputs or vllm_inputs
        self.running = 0
        self._closed = False
        self._tasks: set[Any] = set()

    @property
    def load(self) -> int:
        return self.running

    def compile_constraint(self, constraint: tuple[str, str]) -> tuple[str, str]:
        """vLLM compiles the grammar itself; a schema that is not JSON is refused here."""
        if constraint[0] == "json_schema":
            json.loads(constraint[1])
        return constraint

    def submit(self, job: Job) -> None:
        if self._closed:
            raise ModelNotReady(f"model {self.name!r} was unloaded")
        future = asyncio.run_coroutine_threadsafe(self._run(job), job.loop)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        request = job.request
        self.running += 1
        collector = DeltaCollector(request)
        consumer = asyncio.ensure_future(self._consume(job, collector))
        watcher = asyncio.ensure_future(_wait_for_cancel(request))
        try:
            await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not consumer.done():
                # The client went away: cancelling the consumer closes vLLM's generator,
                # which aborts the request in the engine (its sequence leaves the batch).
                request.cancelled = True
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            error = None if consumer.cancelled() else consumer.exception()
        finally:
            watcher.cancel()
            self.running -= 1
        if error is not None:
            if self._closed:
                job.send(ModelNotReady(f"model {self.name!r} was unloaded"))
            else:
                logger.error("vLLM generation failed: %r", error)
                job.send(GenerationFailed(f"generation failed: {type(error).__name__}: {error}"))
            return
        result = collector.result()
        if self.on_result is not None:
            # Counted here, not by the request: a client that left still cost these tokens.
            self.on_result(request, result)
        job.send(result)

    async def _consume(self, job: Job, collector: DeltaCollector) -> None:
        prompt, sampling = self.build_inputs(job.request, self.stop_token_ids)
        request_id = f"{self.name}-{uuid.uuid4().hex}"
        async for output in self.engine.generate(prompt, sampling, request_id):
            collector.add_prompt(getattr(output, "prompt_logprobs", None))
            piece = collector.add(*completion_delta(output))
            if piece:
                job.send(piece)

    def close(self) -> None:
        """Refuse new requests; stop the engine once those running finish (or after a while).

        Like a transformers lane, requests already running finish on the old engine; the
        engine's process and GPU memory go afterwards. Waiting happens in a thread: close is
        called from the event loop those requests run on.
        """
        if self._closed:
            return
        self._closed = True
        threading.Thread(
            target=self._shutdown_when_idle, name=f"vllm-close-{self.name}", daemon=True
        ).start()

    def _shutdown_when_idle(self) -> None:
        deadline = time.monotonic() + CLOSE_DRAIN_S
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(Exception):  # already dead: nothing more to free
            self.engine.shutdown()


def vllm_inputs(request: PreparedRequest, stop_token_ids: Sequence[int]) -> tuple[Any, Any]:
    """The request as vLLM's TokensPrompt and SamplingParams (streaming deltas)."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    extra: dict[str, Any] = {}
    structured = structured_kwargs(request.params.constraint)
    if structured:
        try:  # vLLM >= 0.10.2
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(**structured)
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            extra["guided_decoding"] = GuidedDecodingParams(**structured)
    sampling = VllmSamplingParams(
        **vllm_sampling_kwargs(request.params, stop_token_ids),
        output_kind=RequestOutputKind.DELTA,
        **extra,
    )
    return TokensPrompt(prompt_token_ids=list(request.input_ids)), sampling


async def _wait_for_cancel(request: PreparedRequest) -> None:
    # The cancel flag is a threading.Event shared with the transformers lanes; poll it.
    while not request.cancel.is_set():
        await asyncio.sleep(CANCEL_POLL_S)


def load_vllm(
    name: str,
    directory: Path,
    *,
    gpu_memory_utilization: float,
    on_result: Callable[[PreparedRequest, GenerationResult], None] | None = None,
) -> tuple[VLLMEngine, Any, int | None]:
    """Start a vLLM engine on `directory`; returns it, the tokenizer and the context length.

    Blocking (minutes: weights, CUDA graphs): runs in the registry's loading thread. The
    tokenizer is transformers' own, so prompts are rendered and counted exactly as on the
    transformers path; vLLM receives token ids.
    """
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    args = AsyncEngineArgs(**engine_kwargs(directory, gpu_memory_utilization))
    engine = AsyncLLMEngine.from_engine_args(args)
    model_config = getattr(engine, "model_config", None)
    context = getattr(model_config, "max_model_len", None) or config_context_length(directory)
    stops = eos_token_ids(directory, tokenizer.eos_token_id)
    return VLLMEngine(name, engine, on_result, stop_token_ids=stops), tokenizer, context
