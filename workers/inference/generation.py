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
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
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
    """OpenAI-style sampling settings for one request.

    Beyond temperature and top_p: OpenAI's additive presence/frequency penalties, a logit
    bias per token id, log-probabilities of the chosen tokens (with the `top_logprobs` most
    likely alternatives), the prompt's own token log-probabilities (`prompt_logprobs`: the
    completions API's echo), and a constraint on the output (`constraint`: ("json_object", "")
    or ("json_schema", the schema as JSON text)) that each engine enforces with its grammar.
    """

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    constraint: tuple[str, str] | None = None

    @property
    def plain(self) -> bool:
        """Only temperature, top_p, stop and max_tokens: what a shared batch can honour."""
        return not (
            self.presence_penalty
            or self.frequency_penalty
            or self.logit_bias
            or self.logprobs
            or self.prompt_logprobs
            or self.constraint
        )

    @property
    def batch_key(self) -> tuple[float, float] | None:
        """Requests with equal keys can share a batch; seeded ones run alone (reproducible),
        and so do requests with per-row processing (penalties, bias, grammar, logprobs)."""
        if self.seed is not None or not self.plain:
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
    grammar: Any = None  # the engine's compiled form of params.constraint


# One token's log-probability in OpenAI's chat shape: {"token", "logprob", "bytes",
# "top_logprobs": [{"token", "logprob", "bytes"}]}; a prompt's first token has logprob None.
TokenLogprob = dict[str, Any]


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # the completion's tokens (params.logprobs)
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's tokens (prompt_logprobs)
    # Prompt tokens whose KV cells came from the engine's prefix cache (llama.cpp), not prefill.
    cached_tokens: int = 0
    # Engine decode steps from submission to the first token (llama.cpp); metrics only.
    first_token_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        if self.prompt_logprobs is not None:
            out["prompt_logprobs"] = self.prompt_logprobs
        return out


class Piece(str):
    """A streamed text piece that carries the log-probability entries of the tokens that made
    it (engines that score while streaming send these; a plain str carries none)."""

    logprobs: list[TokenLogprob]

    def __new__(cls, text: str, logprobs: Sequence[TokenLogprob] = ()) -> Piece:
        piece = super().__new__(cls, text)
        piece.logprobs = list(logprobs)
        return piece


def token_entry(
    piece: bytes, logprob: float | None, top: Sequence[tuple[bytes, float]] = ()
) -> TokenLogprob:
    """One token's log-probability entry from its bytes (a piece of a multi-byte character
    keeps its exact bytes; its text shows U+FFFD where the character is cut)."""
    return {
        "token": piece.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(piece),
        "top_logprobs": [
            {"token": p.decode("utf-8", "replace"), "logprob": lp, "bytes": list(p)}
            for p, lp in top
        ],
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


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def tool_instructions(tools: Sequence[dict[str, Any]]) -> str:
    """The system text that offers `tools` to a model whose chat template knows no tools
    (Hermes-style tags: what most small instruction models have seen)."""
    functions = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call functions. To call one, answer with only "
        f'{TOOL_CALL_OPEN}{{"name": <function name>, "arguments": <arguments object>}}'
        f"{TOOL_CALL_CLOSE}\nThe functions:\n{functions}"
    )


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The model's own chat template, or a plain "role: content" transcript when it has none.

    With `tools`, a template that handles tools itself gets them (and the messages' structured
    tool calls); any other template gets them described in the system message, and earlier
    tool calls written into the assistant's text the way it is asked to write them.
    """
    template = getattr(tokenizer, "chat_template", None)
    native = bool(tools) and isinstance(template, str) and "tools" in template
    flat: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {
            "role": str(m["role"]),
            "content": message_text(m.get("content")),
        }
        calls = m.get("tool_calls") or []
        if calls and native:
            entry["tool_calls"] = calls
        elif calls:
            entry["content"] += "".join(_call_text(call) for call in calls)
        if native and m.get("tool_call_id"):
            entry["tool_call_id"] = m["tool_call_id"]
        flat.append(entry)
    if tools and not native:
        offer = tool_instructions(tools)
        if flat and flat[0]["role"] == "system":
            flat[0] = {**flat[0], "content": f"{flat[0]['content']}\n\n{offer}".strip()}
        else:
            flat.insert(0, {"role": "system", "content": offer})
    if template:
        extra = {"tools": list(tools)} if native and tools else {}
        return str(
            tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True, **extra)
        )
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
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of the prompt or rendered chat; with `context`, a text that cannot fit is
    refused from its length before it is tokenized (a 10 MB prompt took 27 s to tokenize)."""
    text = render_chat(tokenizer, messages, tools) if messages is not None else (prompt or "")
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


def vocab_size(tokenizer: Any) -> int | None:
    """How many token ids the tokenizer (hence the model's input) knows; None if unknown."""
    try:
        return int(len(tokenizer))
    except TypeError:
        return None


def _checked_ids(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """A client's token-array prompt, refused unless every id is in the vocabulary."""
    if not ids:
        raise PromptRejected("the prompt's token array is empty", param="prompt")
    size = vocab_size(tokenizer)
    bad = next((t for t in ids if t < 0 or (size is not None and t >= size)), None)
    if bad is not None:
        raise PromptRejected(
            f"token id {bad} is not in this model's vocabulary of {size} tokens", param="prompt"
        )
    return list(ids)


def compile_constraint(entry: LoadedModel, constraint: tuple[str, str]) -> Any:
    """The engine's grammar for a JSON constraint: llama.cpp compiles GBNF itself, vLLM hands
    the schema to its guided decoding, the transformers lanes use xgrammar."""
    compiler = getattr(entry.engine, "compile_constraint", None)
    if compiler is None:
        from workers.inference.constraints import xgrammar_compile

        compiler = lambda c: xgrammar_compile(entry.tokenizer, entry.model, c)  # noqa: E731
    try:
        return compiler(constraint)
    except PromptRejected:
        raise
    except Exception as exc:
        raise PromptRejected(
            f"the JSON schema cannot be enforced: {type(exc).__name__}: {exc}",
            param="response_format",
        ) from exc


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
    prompt_ids: Sequence[int] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> PreparedRequest:
    """Render and tokenise a request and fix its generation budget (`Budget`); refuse it if
    it cannot fit the model's context window. `prompt_ids` is a prompt given as token ids."""
    prepared = _prepare(
        entry,
        prompt=prompt,
        messages=messages,
        params=params,
        budget=budget or Budget(),
        prompt_ids=prompt_ids,
        tools=tools,
    )
    if params.constraint is not None:
        prepared.grammar = compile_constraint(entry, params.constraint)
    return prepared


def _prepare(
    entry: LoadedModel,
    *,
    prompt: str | None,
    messages: Sequence[dict[str, Any]] | None,
    params: SamplingParams,
    budget: Budget,
    prompt_ids: Sequence[int] | None,
    tools: Sequence[dict[str, Any]] | None,
) -> PreparedRequest:
    tokenizer = entry.tokenizer
    if tokenizer is None:
        raise ModelNotReady(f"model {entry.name!r} is not loaded")
    context = entry.context_length
    # A chat that may drop old turns is not refused from its whole length.
    trims = budget.trim_history and not budget.explicit and messages is not None
    if prompt_ids is not None:
        ids = _checked_ids(tokenizer, prompt_ids)
        if context and len(ids) > context:
            raise PromptRejected(
                f"this model's maximum context length is {context} tokens; the prompt has "
                f"{len(ids)} tokens",
                code="context_length_exceeded",
                param="prompt",
            )
    else:
        ids = _encode(tokenizer, prompt, messages, None if trims else context, tools)
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
            ids = _encode(tokenizer, None, kept, None, tools)
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
        # max_tokens 0 (a prompt scored, nothing generated) never reaches model.generate.
        max_new_tokens=max(1, max(r.params.max_tokens for r in requests)),
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
    # Per-row processing (penalties, bias, grammar, logprobs) only ever runs in a batch of one.
    processors = _processors(params, requests[0].grammar, longest) if len(requests) == 1 else []
    prompt_logprobs: list[TokenLogprob] | None = None
    step_logits: Any = None
    try:
        with _RNG_LOCK if sample else contextlib.nullcontext(), torch.inference_mode():
            if params.prompt_logprobs:
                prompt_logprobs = _prompt_logprobs(model, tokenizer, requests[0], device)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            if params.max_tokens == 0:
                output = input_ids
            else:
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    logits_processor=LogitsProcessorList(processors),
                    streamer=streamer,
                    output_logits=params.logprobs,
                    return_dict_in_generate=params.logprobs,
                )
                if params.logprobs:
                    output, step_logits = generated.sequences, generated.logits
                else:
                    output = generated
    except Exception as exc:
        logger.exception("generation failed")
        raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    eos_set = set(eos)
    results = []
    for row, request in enumerate(requests):
        generated = output[row, longest:].tolist()
        limit = request.params.max_tokens
        stopped_at = stopper.stopped_at[row]
        if stopped_at is not None:
            limit = min(limit, stopped_at)
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
            # A character whose bytes the limit cut apart decodes to one U+FFFD: dropped.
            # Earlier U+FFFDs are bytes that are simply not UTF-8 (an untrained model's): kept.
            text = text.removesuffix("\ufffd")
        logprobs = None
        if request.params.logprobs:
            # The end token too: it is one of the completion tokens (vLLM's way).
            scored = generated[:completion_tokens]
            logprobs = _token_logprobs(tokenizer, step_logits, row, scored, request.params)
        results.append(
            GenerationResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=len(request.input_ids),
                completion_tokens=completion_tokens,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
        )
    return results


def _processors(params: SamplingParams, grammar: Any, prompt_len: int) -> list[Any]:
    from workers.inference.constraints import PenaltiesAndBias, grammar_processor

    processors: list[Any] = []
    if params.presence_penalty or params.frequency_penalty or params.logit_bias:
        processors.append(PenaltiesAndBias(params, prompt_len))
    if grammar is not None:
        processors.append(grammar_processor(grammar))
    return processors


def _token_bytes(tokenizer: Any, token: int) -> bytes:
    """A token's text as bytes (byte-level BPE spells bytes as characters: undone here)."""
    piece = tokenizer.convert_ids_to_tokens(int(token))
    try:
        return bytes(tokenizer.convert_tokens_to_string([piece]), "utf-8")
    except Exception:  # an unusual tokenizer: its plain decode
        return tokenizer.decode([int(token)]).encode("utf-8")


def _entries(tokenizer: Any, logprobs: Any, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
    """Entries for `tokens`, row i of `logprobs` being the distribution token i was drawn from."""
    import torch

    entries = []
    for index, token in enumerate(tokens):
        row = logprobs[index]
        top: list[tuple[bytes, float]] = []
        if k:
            values, ids = torch.topk(row, min(k, row.shape[-1]))
            top = [
                (_token_bytes(tokenizer, int(t)), float(v))
                for v, t in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        entries.append(token_entry(_token_bytes(tokenizer, token), float(row[token]), top))
    return entries


def _token_logprobs(
    tokenizer: Any, step_logits: Any, row: int, tokens: Sequence[int], params: SamplingParams
) -> list[TokenLogprob]:
    """The model's own log-probabilities (before temperature) of the generated tokens."""
    import torch

    if not tokens:
        return []
    stacked = torch.stack([step[row] for step in step_logits[: len(tokens)]]).float()
    return _entries(tokenizer, torch.log_softmax(stacked, dim=-1), tokens, params.top_logprobs)


def _prompt_logprobs(
    model: Any, tokenizer: Any, request: PreparedRequest, device: str
) -> list[TokenLogprob]:
    """Each prompt token's log-probability given those before it (the first has none)."""
    import torch

    ids = request.input_ids
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    first = token_entry(_token_bytes(tokenizer, ids[0]), None)
    return [first, *_entries(tokenizer, logprobs, ids[1:], request.params.top_logprobs)]


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
) -> AsyncGenerator[str | GenerationResult, None]:
    """Yield text deltas as they are decoded, then the GenerationResult.

    `lanes_of` is the LoadedModel (anything with `submit(job)`); `job` one already submitted.
    Closing the iterator (the client went away) cancels the request: its row stops at the
    next decoding step.
    """
    if job is None:
        job = submit(lanes_of, request)
    stops = request.params.stop
    raw, sent = "", 0
    entries: list[TokenLogprob] = []  # logprobs of text not yet handed on
    try:
        pending: Event | None = None
        while True:
            item = pending if pending is not None else await job.events.get()
            pending = None
            if isinstance(item, Piece):
                entries += item.logprobs
            # A consumer that fell behind (a busy machine, a slow client) takes every text
            # piece already queued as one delta: fewer events, the same text.
            while isinstance(item, str) and not job.events.empty():
                following = job.events.get_nowait()
                if not isinstance(following, str):
                    pending = following
                    break
                if isinstance(following, Piece):
                    entries += following.logprobs
                item = str(item) + following
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
                yield Piece(raw[sent:safe], entries) if entries else raw[sent:safe]
                entries = []
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
