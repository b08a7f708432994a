"""Text generation on a loaded model: prompt rendering, batched decoding, streaming, stop strings.

Concurrency model: one generation runs per model at a time (an asyncio.Lock that is released
by the worker thread only when `model.generate` has returned, so a cancelled request can never
let two generations overlap). Non-streaming requests that queue up behind a running one are
decoded together as one left-padded batch when their sampling settings match.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from workers.inference.registry import LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")
FinishReason = Literal["stop", "length"]
MAX_BATCH = 8


class PromptRejected(ValueError):
    """The prompt cannot be generated from (too long for the context window, malformed messages)."""


class ModelNotReady(RuntimeError):
    """The model was unloaded or replaced between the request's arrival and its turn."""


class GenerationFailed(RuntimeError):
    """`model.generate` raised; the message carries the original error."""


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling settings for one request."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def batch_key(self) -> tuple[float, float] | None:
        """Requests with equal keys can share a batch; seeded ones run alone (reproducible)."""
        if self.seed is not None:
            return None
        if self.temperature == 0:
            return (0.0, 1.0)
        return (self.temperature, self.top_p)


@dataclass
class PreparedRequest:
    """A tokenised prompt plus its settings; `cancel` stops its row at the next decoding step."""

    input_ids: list[int]
    params: SamplingParams
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


# --------------------------------------------------------------------------- prompt preparation


def message_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of text parts) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise PromptRejected("only text message content is supported")
        return "".join(parts)
    raise PromptRejected("message content must be a string or a list of text parts")


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> str:
    """The model's own chat template, or a plain "role: content" transcript when it has none."""
    flat = [{"role": str(m["role"]), "content": message_text(m.get("content"))} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in flat]
    return "\n".join([*lines, "assistant:"])


def prepare_request(
    entry: LoadedModel,
    *,
    prompt: str | None,
    messages: Sequence[dict[str, Any]] | None,
    params: SamplingParams,
) -> PreparedRequest:
    """Render and tokenise a request, refusing it if it cannot fit the model's context window."""
    tokenizer = entry.tokenizer
    if tokenizer is None:
        raise ModelNotReady(f"model {entry.name!r} is not loaded")
    if messages is not None:
        text = render_chat(tokenizer, messages)
        # Chat templates write their own BOS/special tokens.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt or "", add_special_tokens=True)["input_ids"]
    if not ids:
        # An empty prompt still needs one position to condition on: GPT-2's convention.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
        start = start if start is not None else tokenizer.eos_token_id
        if start is None:
            raise PromptRejected("the prompt is empty")
        ids = [start]
    context = entry.context_length
    if context and len(ids) + params.max_tokens > context:
        raise PromptRejected(
            f"this model's maximum context length is {context} tokens; the prompt has "
            f"{len(ids)} tokens and max_tokens asks for {params.max_tokens} more"
        )
    return PreparedRequest(input_ids=list(ids), params=params)


# --------------------------------------------------------------------------- decoding (sync)


class _RowStopper(StoppingCriteria):
    """Per-row stop: own max_tokens, a stop string in the decoded tail, or cancellation.

    It records where each row stopped, because finished rows are padded afterwards and the
    pad id need not be EOS.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, requests: Sequence[PreparedRequest]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.requests = requests
        self.stopped_at: list[int | None] = [None] * len(requests)
        # Stop strings are matched on a decoded window of recent tokens, not the whole text,
        # so the per-step cost stays flat; a token decodes to at least one character.
        self.windows = [max((len(s) for s in r.params.stop), default=0) + 8 for r in requests]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_len
        flags = []
        for row, request in enumerate(self.requests):
            if self.stopped_at[row] is None:
                done = request.cancel.is_set() or generated >= request.params.max_tokens
                if not done and request.params.stop and generated > 0:
                    start = max(self.prompt_len, input_ids.shape[1] - self.windows[row])
                    tail = self.tokenizer.decode(input_ids[row, start:], skip_special_tokens=True)
                    done = any(stop in tail for stop in request.params.stop)
                if done:
                    self.stopped_at[row] = generated
            flags.append(self.stopped_at[row] is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return list(configured) if isinstance(configured, (list, tuple)) else [int(configured)]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one was found."""
    positions = [text.find(s) for s in stops if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def generate_batch(
    model: Any,
    tokenizer: Any,
    device: str,
    requests: Sequence[PreparedRequest],
    streamer: Any = None,
) -> list[GenerationResult]:
    """Decode several prompts as one left-padded batch; all share requests[0]'s sampling settings.

    Blocking: call it from a worker thread. A streamer is only allowed for a batch of one.
    """
    import torch
    from transformers import GenerationConfig

    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos[0] if eos else 0
    longest = max(len(r.input_ids) for r in requests)
    input_ids = torch.tensor(
        [[pad_id] * (longest - len(r.input_ids)) + r.input_ids for r in requests], device=device
    )
    attention_mask = torch.tensor(
        [[0] * (longest - len(r.input_ids)) + [1] * len(r.input_ids) for r in requests],
        device=device,
    )
    params = requests[0].params
    sample = params.temperature > 0
    # Every knob is set explicitly: a checkpoint's generation_config.json (repetition penalty,
    # top_k, ...) must not silently change what the OpenAI parameters mean.
    config = GenerationConfig(
        max_new_tokens=max(r.params.max_tokens for r in requests),
        do_sample=sample,
        temperature=params.temperature if sample else 1.0,
        top_p=params.top_p if sample else 1.0,
        top_k=0 if sample else 50,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
    )
    stopper = _RowStopper(tokenizer, longest, requests)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    try:
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stopper]),
                streamer=streamer,
            )
    except Exception as exc:
        logger.exception("generation failed")
        raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    eos_set = set(eos)
    results = []
    for row, request in enumerate(requests):
        generated = output[row, longest:].tolist()
        limit = request.params.max_tokens
        if stopper.stopped_at[row] is not None:
            limit = min(limit, stopper.stopped_at[row])
        generated = generated[:limit]
        eos_at = next((i for i, tok in enumerate(generated) if tok in eos_set), None)
        tokens = generated if eos_at is None else generated[:eos_at]
        completion_tokens = len(generated) if eos_at is None else eos_at + 1
        text, hit_stop = cut_at_stop(
            tokenizer.decode(tokens, skip_special_tokens=True), request.params.stop
        )
        finish: FinishReason = "stop"
        if not hit_stop and eos_at is None and completion_tokens >= request.params.max_tokens:
            finish = "length"
        results.append(
            GenerationResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=len(request.input_ids),
                completion_tokens=completion_tokens,
            )
        )
    return results


# --------------------------------------------------------------------------- scheduling (async)


def _run_holding_lock(lock: asyncio.Lock, fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run `fn` in a thread; the caller already holds `lock`, the thread releases it when done.

    Releasing from the thread's completion, not from the awaiting coroutine, is what keeps a
    cancelled request from starting the next generation while this one still runs.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def finish(result: Any, error: BaseException | None) -> None:
        lock.release()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        # A closed loop means the server is shutting down; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(finish, result, error)

    try:
        threading.Thread(target=target, name="generate", daemon=True).start()
    except BaseException:
        lock.release()
        raise
    return future


@dataclass
class _Pending:
    request: PreparedRequest
    future: asyncio.Future[GenerationResult]


def _take_batch(entry: LoadedModel, first: _Pending) -> list[_Pending]:
    """`first` plus waiting requests it can share a batch with (same settings, fits context)."""
    if first in entry.pending:
        entry.pending.remove(first)
    batch = [first]
    key = first.request.params.batch_key
    if key is None:
        return batch
    for other in list(entry.pending):
        if len(batch) >= MAX_BATCH:
            break
        if other.future.done():
            entry.pending.remove(other)
            continue
        if other.request.params.batch_key != key:
            continue
        members = [*batch, other]
        longest = max(len(p.request.input_ids) for p in members)
        new_tokens = max(p.request.params.max_tokens for p in members)
        if entry.context_length and longest + new_tokens > entry.context_length:
            continue
        entry.pending.remove(other)
        batch.append(other)
    return batch


async def generate(
    entry: LoadedModel,
    request: PreparedRequest,
    on_batch: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Generate one completion, sharing a batch with compatible requests queued on the model."""
    loop = asyncio.get_running_loop()
    item = _Pending(request, loop.create_future())
    entry.pending.append(item)
    try:
        await entry.lock.acquire()
    except asyncio.CancelledError:
        if item in entry.pending:
            entry.pending.remove(item)
        raise
    if item.future.done():
        # A request ahead of us took ours into its batch.
        entry.lock.release()
        return item.future.result()
    batch = _take_batch(entry, item)
    model, tokenizer = entry.model, entry.tokenizer
    if model is None or tokenizer is None:
        entry.lock.release()
        error = ModelNotReady(f"model {entry.name!r} was unloaded")
        for member in batch:
            if not member.future.done():
                member.future.set_exception(error)
        return item.future.result()
    if on_batch is not None:
        on_batch(len(batch))
    requests = [member.request for member in batch]
    running = _run_holding_lock(
        entry.lock, lambda: generate_batch(model, tokenizer, entry.device, requests)
    )

    def distribute(done: asyncio.Future[list[GenerationResult]]) -> None:
        error = done.exception()
        for index, member in enumerate(batch):
            if member.future.done():
                continue
            if error is not None:
                member.future.set_exception(error)
            else:
                member.future.set_result(done.result()[index])

    running.add_done_callback(distribute)
    try:
        return await asyncio.shield(item.future)
    except asyncio.CancelledError:
        request.cancel.set()  # stops only this row; the rest of the batch carries on
        raise


class _QueueStreamer(TextStreamer):
    """TextStreamer that hands finished text pieces to the event loop instead of printing."""

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop = loop
        self.queue = queue

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._send(text)

    def close(self) -> None:
        self._send(None)

    def _send(self, item: str | None) -> None:
        # A closed loop means nobody listens any more; generation stops via `cancel` anyway.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be sent: up to a stop string, minus a tail that may start one."""
    cut, found = cut_at_stop(text, stops)
    if found:
        return len(cut)
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return len(text) - hold


async def stream(
    entry: LoadedModel, request: PreparedRequest
) -> AsyncIterator[str | GenerationResult]:
    """Yield text deltas as they are decoded, then the GenerationResult.

    Closing the iterator (the client went away) cancels the generation at its next step.
    """
    await entry.lock.acquire()
    model, tokenizer = entry.model, entry.tokenizer
    if model is None or tokenizer is None:
        entry.lock.release()
        raise ModelNotReady(f"model {entry.name!r} was unloaded")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    streamer = _QueueStreamer(tokenizer, loop, queue)

    def run() -> GenerationResult:
        try:
            return generate_batch(model, tokenizer, entry.device, [request], streamer=streamer)[0]
        finally:
            streamer.close()

    running = _run_holding_lock(entry.lock, run)
    stops = request.params.stop
    raw, sent = "", 0
    try:
        while (piece := await queue.get()) is not None:
            raw += piece
            safe = _safe_length(raw, stops)
            if safe > sent:
                yield raw[sent:safe]
                sent = safe
        result = await running
        if len(result.text) > sent and result.text.startswith(raw[:sent]):
            yield result.text[sent:]
        yield result
    finally:
        request.cancel.set()
        if not running.done():
            # Nobody will read it; keep asyncio from reporting an unretrieved exception.
            running.add_done_callback(lambda f: f.cancelled() or f.exception())
