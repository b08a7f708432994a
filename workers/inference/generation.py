"""Text generation on a loaded model: prompt rendering, batched decoding, streaming, stop strings.

Concurrency model (dynamic batching): each replica of a deployment is a *lane*, one thread that
owns a queue. The lane takes the oldest waiting request plus every queued request with the same
sampling settings (up to the deployment's max batch size), decodes them as one left-padded
batch with `model.generate`, and hands each row's tokens to its request as they are decoded, so
streamed and whole answers batch alike. A short gathering window after the lane wakes lets
requests sent together start together. Cancelling a request (its client went away) stops its
row at the next decoding step; the rest of the batch carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

if TYPE_CHECKING:  # a type only: registry imports this module (lanes, errors) when it loads
    from workers.inference.registry import LoadedModel

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
MAX_BATCH = 8
# How long a lane waits for companions before it starts a batch: it keeps waiting while new
# requests arrive less than GATHER_GAP_S apart, at most GATHER_MAX_S in all, so requests sent
# together (a client's n, a burst) share one batch instead of queueing behind it.
GATHER_GAP_S = 0.02
GATHER_MAX_S = 0.1
# The torch CPU generator is process-wide: seeded batches hold this lock while they sample so
# another lane's sampling cannot advance the shared random stream (greedy batches don't).
_RNG_LOCK = threading.Lock()


class PromptRejected(ValueError):
    """The prompt cannot be generated from (too long for the context window, malformed messages).

    `code` and `param` travel to the OpenAI error (`context_length_exceeded` on `messages` or
    `prompt` for a prompt that does not fit).
    """

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class ModelNotReady(RuntimeError):
    """The model was unloaded or replaced between the request's arrival and its turn."""


class GenerationFailed(RuntimeError):
    """`model.generate` raised; the message carries the original error."""


class EngineBusy(RuntimeError):
    """The deployment already holds as many requests as its concurrency limit allows (429)."""

    def __init__(self, name: str, limit: int, retry_after_s: int = 1) -> None:
        super().__init__(
            f"model {name!r} is serving its limit of {limit} concurrent requests; retry in "
            f"{retry_after_s} s, or raise the deployment's max batch size"
        )
        self.retry_after_s = retry_after_s


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
    cancelled: bool = False  # set by the lane when its row was stopped by `cancel`
    trimmed: int = 0  # oldest messages left out so the conversation fits the context


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


# A request that names no max_tokens gets what fits after its prompt, up to its cap (the
# deployment's max new tokens) or this when neither the cap nor the context is known.
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Budget:
    """How many tokens a request may generate.

    `explicit`: the client asked for params.max_tokens, so a prompt that leaves less room is
    refused (OpenAI's 400). Otherwise the budget is what the context leaves after the prompt,
    up to `cap`; with `trim_history` a chat whose history no longer fits drops its oldest
    turns (never the system message or the last one) until the answer has room again.
    """

    explicit: bool = True
    cap: int | None = None
    trim_history: bool = False


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` stands for (computed once, then kept).

    A vocabulary entry is at least as long as the text it covers: byte-level BPE spells each
    byte as one character, SentencePiece spells a space as one "▁", byte-fallback tokens
    as "<0xNN>". The llama.cpp tokenizer measures its pieces at load and sets this itself.
    """
    known = getattr(tokenizer, "max_token_chars", None)
    if known:
        return int(known)
    try:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    except Exception:  # a tokenizer without a readable vocabulary: a generous fixed bound
        longest = 64
    longest = max(1, longest)
    with contextlib.suppress(AttributeError):  # a tokenizer that refuses new attributes
        tokenizer.max_token_chars = longest
    return longest


def _param(messages: Sequence[dict[str, Any]] | None) -> str:
    return "messages" if messages is not None else "prompt"


def _encode(
    tokenizer: Any,
    prompt: str | None,
    messages: Sequence[dict[str, Any]] | None,
    context: int | None = None,
) -> list[int]:
    """Token ids of the prompt or rendered chat; with `context`, a text that cannot fit is
    refused from its length before it is tokenized (a 10 MB prompt took 27 s to tokenize)."""
    text = render_chat(tokenizer, messages) if messages is not None else (prompt or "")
    if context:
        # No token stands for more than max_token_chars characters.
        limit = context * max_token_chars(tokenizer)
        if len(text) > limit:
            raise PromptRejected(
                f"this model's maximum context length is {context} tokens; the prompt has "
                f"{len(text)} characters, more than {context} tokens can hold ({limit})",
                code="context_length_exceeded",
                param=_param(messages),
            )
    # Chat templates write their own BOS/special tokens.
    ids = tokenizer(text, add_special_tokens=messages is None)["input_ids"]
    if not ids:
        # An empty prompt still needs one position to condition on: GPT-2's convention.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
        start = start if start is not None else tokenizer.eos_token_id
        if start is None:
            raise PromptRejected("the prompt is empty")
        ids = [start]
    return list(ids)


def _wanted_room(context: int, cap: int) -> int:
    """Room a trimmed conversation keeps for the answer: the cap, but at most half the
    context (a longer history is worth more than a long answer)."""
    return max(1, min(cap, context // 2))


def prepare_request(
    entry: LoadedModel,
    *,
    prompt: str | None,
    messages: Sequence[dict[str, Any]] | None,
    params: SamplingParams,
    budget: Budget | None = None,
) -> PreparedRequest:
    """Render and tokenise a request and fix its generation budget (`Budget`); refuse it if
    it cannot fit the model's context window."""
    budget = budget or Budget()
    tokenizer = entry.tokenizer
    if tokenizer is None:
        raise ModelNotReady(f"model {entry.name!r} is not loaded")
    context = entry.context_length
    # A chat that may drop old turns is not refused from its whole length.
    trims = budget.trim_history and not budget.explicit and messages is not None
    ids = _encode(tokenizer, prompt, messages, None if trims else context)
    if budget.explicit:
        if context and len(ids) + params.max_tokens > context:
            raise PromptRejected(
                f"this model's maximum context length is {context} tokens; the prompt has "
                f"{len(ids)} tokens and max_tokens asks for {params.max_tokens} more",
                code="context_length_exceeded",
                param=_param(messages),
            )
        return PreparedRequest(input_ids=ids, params=params)
    cap = budget.cap or DEFAULT_MAX_TOKENS
    if not context:
        return PreparedRequest(input_ids=ids, params=replace(params, max_tokens=cap))
    trimmed = 0
    if budget.trim_history and messages is not None:
        kept = list(messages)
        room = _wanted_room(context, cap)
        while context - len(ids) < room:
            # The oldest turn after any leading system message; the last message always stays.
            first = next((i for i, m in enumerate(kept) if m.get("role") != "system"), None)
            if first is None or first >= len(kept) - 1:
                break
            del kept[first]
            trimmed += 1
            ids = _encode(tokenizer, None, kept)
    left = context - len(ids)
    if left < 1:
        raise PromptRejected(
            f"this model's maximum context length is {context} tokens and the "
            f"{'last message' if trimmed else 'prompt'} alone has {len(ids)}; shorten it",
            code="context_length_exceeded",
            param=_param(messages),
        )
    return PreparedRequest(
        input_ids=ids, params=replace(params, max_tokens=min(cap, left)), trimmed=trimmed
    )


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
                if request.cancel.is_set():
                    request.cancelled = True
                done = request.cancelled or generated >= request.params.max_tokens
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

    Blocking: call it from a worker thread. `streamer` is a BatchStreamer (one sink per row) or
    any transformers streamer for a batch of one.
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
    if isinstance(streamer, BatchStreamer):
        streamer.stopper = stopper
    try:
        with _RNG_LOCK if sample else contextlib.nullcontext(), torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
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


# --------------------------------------------------------------------------- streaming rows


class BatchStreamer(BaseStreamer):
    """Hands each row's newly decoded text to its sink while `model.generate` runs.

    transformers calls `put` with the prompt first, then with one token per row per step (rows
    that already finished get padding). A row's text is re-decoded whole each step and only a
    piece that no longer ends in an incomplete character is sent.
    """

    def __init__(
        self, tokenizer: Any, sinks: Sequence[Callable[[str], None]], eos: Sequence[int]
    ) -> None:
        self.tokenizer = tokenizer
        self.sinks = sinks
        self.eos = set(eos)
        self.tokens: list[list[int]] = [[] for _ in sinks]
        self.sent = [0] * len(sinks)
        self.finished = [False] * len(sinks)
        self.stopper: _RowStopper | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        column = value.reshape(-1).tolist()
        for row, token in enumerate(column):
            if self.finished[row]:
                continue
            if self.stopper is not None and self.stopper.stopped_at[row] is not None:
                self.finished[row] = True
                continue
            if token in self.eos:
                self.finished[row] = True
                continue
            self.tokens[row].append(int(token))
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character: wait for the rest
            if len(text) > self.sent[row]:
                self.sinks[row](text[self.sent[row] :])
                self.sent[row] = len(text)

    def end(self) -> None:
        pass


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


# --------------------------------------------------------------------------- lanes (threads)


# What a job's queue carries: text pieces, then one GenerationResult or one exception.
Event = str | GenerationResult | BaseException


@dataclass
class Job:
    """One request waiting in, or running on, a lane; events go to the asyncio side."""

    request: PreparedRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    submitted: float = field(default_factory=time.perf_counter)

    def send(self, item: Event) -> None:
        # A closed loop means the server is shutting down; nobody listens any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Lane:
    """One decoding thread over shared read-only weights: a replica of the deployment.

    Several lanes on one model decode batches in parallel (torch releases the GIL in its
    kernels); on a CPU they share the cores, on a GPU they overlap host work with kernels.
    """

    def __init__(
        self,
        name: str,
        index: int,
        get_model: Callable[[], tuple[Any, Any, str, int | None]],
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
        on_result: Callable[[PreparedRequest, GenerationResult], None] | None = None,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self._get_model = get_model
        self._on_batch = on_batch
        self._on_result = on_result
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.running = 0
        self._thread = threading.Thread(target=self._loop, name=f"lane-{name}-{index}", daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self._queue) + self.running

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ModelNotReady(f"model {self.name!r} was unloaded")
            self._queue.append(job)
            self._cond.notify()

    def close(self) -> None:
        """Stop taking work; the batch already running finishes, queued jobs are refused."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.send(ModelNotReady(f"model {self.name!r} was unloaded"))

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + GATHER_MAX_S
            while len(self._queue) < self.max_batch:
                seen, remaining = len(self._queue), deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(GATHER_GAP_S, remaining))
                if len(self._queue) == seen:
                    break
            if not self._queue:
                return []
            first = self._queue.popleft()
            batch = [first]
            key = first.request.params.batch_key
            _, _, _, context = self._get_model()
            if key is not None:
                for job in list(self._queue):
                    if len(batch) >= self.max_batch:
                        break
                    if job.request.cancel.is_set():
                        self._queue.remove(job)
                        job.request.cancelled = True
                        job.send(ModelNotReady("cancelled before it started"))
                        continue
                    if job.request.params.batch_key != key:
                        continue
                    members = [*batch, job]
                    longest = max(len(j.request.input_ids) for j in members)
                    new_tokens = max(j.request.params.max_tokens for j in members)
                    if context and longest + new_tokens > context:
                        continue
                    self._queue.remove(job)
                    batch.append(job)
            self.running = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)
            self.running = 0

    def _run(self, batch: list[Job]) -> None:
        model, tokenizer, device, _ = self._get_model()
        if model is None or tokenizer is None:
            for job in batch:
                job.send(ModelNotReady(f"model {self.name!r} was unloaded"))
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        streamer = BatchStreamer(tokenizer, [job.send for job in batch], _eos_ids(model, tokenizer))
        try:
            results = generate_batch(
                model, tokenizer, device, [job.request for job in batch], streamer=streamer
            )
        except BaseException as exc:  # handed to every waiting request
            for job in batch:
                job.send(exc)
            return
        for job, result in zip(batch, results, strict=True):
            if self._on_result is not None:
                # Counted here, not by the request: a client that left still cost these tokens.
                self._on_result(job.request, result)
            job.send(result)


# --------------------------------------------------------------------------- async side


def submit(lanes_of: Any, request: PreparedRequest) -> Job:
    """Hand the request to the model's lanes or engine now (raises EngineBusy when full).

    Called before a streaming response starts, so a refusal is still a proper status code.
    """
    job = Job(request, asyncio.get_running_loop(), asyncio.Queue())
    lanes_of.submit(job)
    return job


async def stream(
    lanes_of: Any, request: PreparedRequest, job: Job | None = None
) -> AsyncIterator[str | GenerationResult]:
    """Yield text deltas as they are decoded, then the GenerationResult.

    `lanes_of` is the LoadedModel (anything with `submit(job)`); `job` one already submitted.
    Closing the iterator (the client went away) cancels the request: its row stops at the
    next decoding step.
    """
    if job is None:
        job = submit(lanes_of, request)
    stops = request.params.stop
    raw, sent = "", 0
    try:
        while True:
            item = await job.events.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, GenerationResult):
                if len(item.text) > sent and item.text.startswith(raw[:sent]):
                    yield item.text[sent:]
                yield item
                return
            raw += item
            safe = _safe_length(raw, stops)
            if safe > sent:
                yield raw[sent:safe]
                sent = safe
    finally:
        request.cancel.set()  # a no-op once finished; stops the row if we left early


async def generate(
    lanes_of: Any, request: PreparedRequest, job: Job | None = None
) -> GenerationResult:
    """One whole completion (batched with whatever else is queued on the model)."""
    result: GenerationResult | None = None
    events = stream(lanes_of, request, job)
    try:
        async for item in events:
            if isinstance(item, GenerationResult):
                result = item
    finally:
        await events.aclose()
    assert result is not None
    return result
