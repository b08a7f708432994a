"""llama.cpp as the engine behind a deployment: GGUF causal LMs on a CPU, continuously batched.

It plugs in where the transformers lanes and vLLM do: `LlamaCppEngine.submit(job)` takes the
same `Job` (a PreparedRequest plus the asyncio queue its events go to) and sends the same
events: text pieces, then one GenerationResult, or an exception. Prompt rendering (the GGUF's
own chat template), the context check, stop-string holding in streams and the HTTP API stay
shared, so a deployment answers the same whichever engine serves it.

Continuous batching, written on llama-cpp-python's low-level API the way llama.cpp's own server
does slots: one context with `n_seq_max` sequences sharing one KV cache (`kv_unified`), one
decoding thread, and at every step one `llama_decode` whose batch holds the next token of every
running sequence plus a chunk of any new prompt. A request that arrives joins at the next step
(its prompt is prefilled alongside the others' decoding), so nobody waits for another request's
whole generation. Each sequence samples with its own sampler chain (temperature, top_p, seed).

Scheduling within a step, as llama.cpp's server and vLLM's chunked prefill do: running
sequences' next tokens go first; prompts fill what is left, oldest first, up to N_BATCH tokens
when nothing is decoding and PREFILL_CHUNK while something is (so a long new prompt delays the
running streams by one chunk per step, never by its whole prefill). A prompt that fits the chunk
gets its first token from the step after it arrives.

Prefix caching: the KV cache is one unified pool, so a new sequence can share the cells of any
sequence whose tokens begin like its prompt (`llama_memory_seq_cp` only tags cells with another
sequence id: nothing is copied) and prefill only the rest. Sources are the running sequences
and the last finished ones, whose cells are kept (up to CACHED_SEQUENCES of them) until their
room or their sequence id is needed. A system prompt, a conversation's history re-sent with
each turn, and `n` choices of one prompt are prefilled once. Prompts arriving together that
share a prefix do not all prefill it: the later ones wait one step for the first one's cells.

Admission: at most `limit()` requests per deployment (running or waiting for KV room); more is
`EngineBusy` (429 with Retry-After). A request starts once its prompt plus `max_tokens` fits in
the free KV cache; the context check at preparation guarantees a lone request always fits.

llama_cpp is imported only in `load_llamacpp` and the engine's thread; nothing here is called
at import time.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.inference.generation import (
    EngineBusy,
    FinishReason,
    GenerationFailed,
    GenerationResult,
    Job,
    ModelNotReady,
    Piece,
    PreparedRequest,
    SamplingParams,
    TokenLogprob,
    cut_at_stop,
    token_entry,
)

logger = logging.getLogger(__name__)

PENALTY_WINDOW = 4096  # tokens the presence/frequency penalties look back over
N_BATCH = 512  # tokens one decode step may carry: running sequences first, then prompt chunks
# Prompt tokens per step while other sequences are decoding: bounds how long a new prompt's
# prefill delays their next token (about 0.1-0.3 s for a 135M model on two cores).
PREFILL_CHUNK = 128
MAX_SLOTS = 64  # sequences one context holds (the deployment's max_batch_size is at most 64)
# Finished sequences whose KV cells stay cached for prefix reuse; each holds a sequence id, so
# they also come out of MAX_SLOTS (and are evicted first when a request needs one).
CACHED_SEQUENCES = 16
# Waiting a step for a sibling's prefix is worth it only when it saves at least this many.
MIN_SHARED_WAIT = 16
# Steps in a row that may carry only new prompts while other sequences wait to decode.
PROMPTS_FIRST_STEPS = 2
# Steps remembered as (step, decoding sequences, prompt tokens) in LlamaCppEngine.recent_steps.
RECENT_STEPS = 64


# --------------------------------------------------------------------------- prompt side


class LlamaCppTokenizer:
    """The GGUF's own tokenizer and chat template, in the shape `prepare_request` uses.

    Tokenizing with the engine's vocabulary means the ids the engine decodes are exactly the
    ones counted against the context; the chat template is the GGUF's `tokenizer.chat_template`
    rendered with Jinja2 in a sandbox, as transformers does.
    """

    def __init__(
        self,
        vocab: Any,
        *,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_id: int | None,
        bos_token: str,
        eos_token: str,
    ) -> None:
        self._vocab = vocab
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template: Any = None
        # The most text one token stands for (bytes, so also characters): prompts longer than
        # context * this cannot fit and are refused before tokenizing.
        self.max_token_chars: int | None = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        import llama_cpp

        data = text.encode("utf-8", errors="replace")
        size = len(data) + 8
        while True:
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, size, add_special_tokens, True
            )
            if count >= 0:
                return {"input_ids": list(buffer[:count])}
            size = -count

    def __len__(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template or "")
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        )


def _piece(vocab: Any, token: int, special: bool = False) -> bytes:
    import llama_cpp

    buffer = ctypes.create_string_buffer(64)
    count = llama_cpp.llama_token_to_piece(vocab, token, buffer, 64, 0, special)
    if count < 0:
        buffer = ctypes.create_string_buffer(-count)
        count = llama_cpp.llama_token_to_piece(vocab, token, buffer, -count, 0, special)
    return buffer.raw[:count]


def _meta(model: Any, key: str) -> str | None:
    import llama_cpp

    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        count = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, size)
        if count < 0:
            return None
        if count < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = count + 1


# --------------------------------------------------------------------------- sequences


@dataclass
class _Sequence:
    """One running request: its KV sequence id, sampler chain and what it produced so far."""

    seq_id: int
    job: Job
    sampler: Any
    prompt: list[int]
    fed: int = 0  # prompt tokens already decoded into the KV cache
    position: int = 0  # next position in this sequence
    last: int | None = None  # the sampled token to feed at the next step
    logits_at: int = -1  # index of this sequence's logits in the step's batch, or -1
    text: str = ""
    completion_tokens: int = 0
    reserved: int = 0  # KV cells held: prompt + max_tokens
    kv: list[int] = field(default_factory=list)  # the tokens in this sequence's KV cells, in order
    attached: bool = False  # prefix sharing decided (done once, before its first prefill)
    # A sequence with the same whole prompt whose last prompt token this step computes: this
    # one samples its first token from the same logits and copies that cell after the step.
    twin: _Sequence | None = None
    cached_tokens: int = 0  # prompt tokens taken from another sequence's cells
    submitted_step: int = 0  # the engine's step count when the request was submitted
    first_token_steps: int | None = None  # steps from submission to the first token
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    # (index in the step's batch, prompt position) of prompt logits to read (echo's logprobs)
    prompt_rows: list[tuple[int, int]] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    logprobs_sent: int = 0  # entries already streamed with a piece
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def request(self) -> PreparedRequest:
        return self.job.request


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    limit = min(len(a), len(b))
    if limit == 0 or a[0] != b[0]:
        return 0
    if a[:limit] == b[:limit]:
        return limit
    low, high = 1, limit  # a[:low] == b[:low] and a[:high] != b[:high]: bisect on slices
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def json_grammar(constraint: tuple[str, str]) -> str:
    """GBNF for a JSON constraint, by llama-cpp-python's converter (llama.cpp's own rules):
    any JSON object for json_object, the schema's documents for json_schema."""
    from llama_cpp import llama_grammar

    kind, schema = constraint
    if kind == "json_object":
        return str(llama_grammar.JSON_GBNF)
    return str(llama_grammar.json_schema_to_gbnf(schema))


def sampler_chain(
    params: SamplingParams,
    vocab: Any = None,
    grammar: str | None = None,
) -> Any:
    """A llama.cpp sampler chain meaning what the OpenAI parameters mean.

    logit_bias first (added to the logits, as OpenAI does), then the presence and frequency
    penalties over everything generated so far, then the grammar (tokens that would break
    the JSON get no chance); then greedy at temperature 0, else temperature, top_p (as
    transformers orders them) and a draw seeded by `seed` (a fresh random seed when none).
    """
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        if not sampler:
            raise GenerationFailed("llama.cpp refused a sampler of this request")
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    try:
        if params.logit_bias and vocab is not None:
            n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for index, (token, bias) in enumerate(params.logit_bias):
                # llama_cpp annotates the field as a c_int32; ctypes takes and gives an int.
                biases[index].token, biases[index].bias = token, bias  # type: ignore[assignment]
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.presence_penalty or params.frequency_penalty:
            # The whole generation is penalised (OpenAI counts every earlier token). The
            # binding declares an older (n_vocab, last_n, ...) signature while the library
            # takes (last_n, ...): the window goes in both integer slots so either reads it.
            window = PENALTY_WINDOW
            add(
                llama_cpp.llama_sampler_init_penalties(
                    window, window, 1.0, params.frequency_penalty, params.presence_penalty
                )
            )
        if grammar is not None and vocab is not None:
            add(llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"))
        if params.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain


def log_softmax(logits: Any) -> Any:
    """Log-probabilities of a logits vector (numpy float32), computed in float64."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_entries(logprobs: Any, k: int) -> list[tuple[int, float]]:
    """The k most likely token ids with their log-probabilities, most likely first."""
    import numpy as np

    if k <= 0:
        return []
    k = min(k, len(logprobs))
    best = np.argpartition(-logprobs, k - 1)[:k]
    best = best[np.argsort(-logprobs[best])]
    return [(int(t), float(logprobs[t])) for t in best]


# --------------------------------------------------------------------------- the engine


class LlamaCppEngine:
    """One llama.cpp context serving one deployment; a decoding thread batches continuously."""

    def __init__(
        self,
        name: str,
        model: Any,
        context: Any,
        *,
        slots: int,
        kv_tokens: int,
        limit: Callable[[], int],
        on_result: Callable[[PreparedRequest, GenerationResult], None] | None = None,
    ) -> None:
        import llama_cpp

        self.name = name
        self._model = model
        self._ctx = context
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._memory = llama_cpp.llama_get_memory(context)
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._free_ids = list(range(slots))
        self.kv_tokens = kv_tokens
        self._reserved = 0
        self.limit = limit
        self.on_result = on_result
        self._waiting: deque[Job] = deque()
        self._running: list[_Sequence] = []
        # Finished sequences kept for prefix reuse: seq id -> tokens in its cells, oldest first.
        self._cache: OrderedDict[int, list[int]] = OrderedDict()
        self._cached_cells = 0
        # Events produced during a step, delivered once per event loop after it (one wakeup).
        self._outbox: list[tuple[Job, Any]] = []
        self.steps = 0  # decode steps run (tests count steps, not seconds)
        self._submitted_at: dict[int, int] = {}  # id(job) -> steps when it was submitted
        self.prompt_tokens_cached = 0  # prompt tokens served from cached cells, in total
        # Steps in a row that left running sequences undecoded to start new prompts first.
        self._skipped_steps = 0
        # (step, decoding sequences, prompt tokens) of the last steps: how the scheduler chose.
        self.recent_steps: deque[tuple[int, int, int]] = deque(maxlen=RECENT_STEPS)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self._waiting) + len(self._running)

    def compile_constraint(self, constraint: tuple[str, str]) -> str:
        """The request's GBNF; checked here (llama.cpp parses it) so a grammar it cannot use
        is the client's 400, not a failure in the decoding thread."""
        import llama_cpp

        grammar = json_grammar(constraint)
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise ValueError("llama.cpp could not parse the grammar made from this schema")
        llama_cpp.llama_sampler_free(sampler)
        return grammar

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ModelNotReady(f"model {self.name!r} was unloaded")
            limit = max(1, int(self.limit()))
            if self.load >= limit:
                raise EngineBusy(self.name, limit)
            self._waiting.append(job)
            self._submitted_at[id(job)] = self.steps
            self._cond.notify()

    def close(self) -> None:
        """Refuse new requests; the thread ends running ones and frees the context."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()

    # -- the decoding thread -------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # the engine is dead: everyone waiting hears why
            logger.exception("llama.cpp engine %s stopped", self.name)
            self._fail_all(GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            self._fail_all(ModelNotReady(f"model {self.name!r} was unloaded"))
            self._free()

    def _step(self) -> bool:
        """Admit, decode one step, sample; False once closed."""
        try:
            return self._step_once()
        finally:
            self._flush()

    def _step_once(self) -> bool:
        refused: list[Job] = []
        with self._cond:
            while not self._closed and not self._running and not self._waiting:
                self._cond.wait()
            if self._closed:
                # Like a closing lane: requests already running finish, waiting ones are refused.
                refused = list(self._waiting)
                self._waiting.clear()
                self._submitted_at.clear()
            else:
                self._admit()
        for job in refused:
            self._send(job, ModelNotReady(f"model {self.name!r} was unloaded"))
        if self._closed and not self._running:
            return False
        self._drop_cancelled()
        if not self._running:
            return True
        count = self._fill_batch()
        if count == 0:
            return True
        import llama_cpp

        code = llama_cpp.llama_decode(self._ctx, self._batch)
        self.steps += 1
        if code != 0:
            # 1: no KV room (admission should prevent it); <0: invalid batch or fatal. The
            # sequences in this step cannot go on; the engine itself stays up for the next.
            error = GenerationFailed(f"generation failed: llama_decode returned {code}")
            for sequence in list(self._running):
                self._finish(sequence, None, error)
            return True
        self._copy_twins()
        self._sample()
        return True

    def _send(self, job: Job, item: Any) -> None:
        self._outbox.append((job, item))

    def _flush(self) -> None:
        """Hand the step's events to their event loops: one wakeup per loop, not per token."""
        if not self._outbox:
            return
        by_loop: dict[Any, list[tuple[Job, Any]]] = {}
        for job, item in self._outbox:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._outbox = []
        for loop, items in by_loop.items():
            # A closed loop means the server is shutting down; nobody listens any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)

    def _admit(self) -> None:
        """Start waiting requests (oldest first) while a sequence id and KV room are free."""
        while self._waiting:
            job = self._waiting[0]
            request = job.request
            if request.cancel.is_set():
                self._waiting.popleft()
                self._submitted_at.pop(id(job), None)
                request.cancelled = True
                self._send(job, ModelNotReady("cancelled before it started"))
                continue
            need = len(request.input_ids) + request.params.max_tokens
            # Cached sequences give way first: their room and their ids are only a bonus.
            while self._cache and (
                not self._free_ids or self._reserved + self._cached_cells + need > self.kv_tokens
            ):
                self._evict_oldest()
            if not self._free_ids:
                return
            if self._reserved + need > self.kv_tokens and self._running:
                return  # the oldest waits for room; later ones wait behind it (no starvation)
            self._waiting.popleft()
            self._reserved += need
            self._running.append(
                _Sequence(
                    seq_id=self._free_ids.pop(0),
                    job=job,
                    sampler=sampler_chain(request.params, self._vocab, request.grammar),
                    prompt=list(request.input_ids),
                    reserved=need,
                    submitted_step=self._submitted_at.pop(id(job), self.steps),
                )
            )

    def _evict_oldest(self) -> None:
        import llama_cpp

        seq_id, tokens = self._cache.popitem(last=False)
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        self._cached_cells -= len(tokens)
        self._free_ids.append(seq_id)

    def _drop_cancelled(self) -> None:
        for sequence in list(self._running):
            if sequence.request.cancel.is_set():
                sequence.request.cancelled = True
                self._finish(sequence, "stop")

    def _attach(self, sequence: _Sequence, earlier: list[_Sequence]) -> bool:
        """Share the longest cached prefix of the sequence's prompt; False: wait a step.

        Sources are cells already decoded: cached finished sequences and running ones. The
        last prompt token is always decoded (its logits give the first token). If an earlier
        sequence is still prefilling a longer common prefix, waiting one step for its cells
        beats prefilling the same tokens twice.
        """
        import llama_cpp

        if sequence.request.params.prompt_logprobs:
            sequence.attached = True  # echo wants every prompt position's logits: prefill all
            return True
        wanted = len(sequence.prompt) - 1
        best, source, cached_source = 0, -1, False
        for seq_id, tokens in self._cache.items():
            shared = min(common_prefix(sequence.prompt, tokens), wanted)
            if shared > best:
                best, source, cached_source = shared, seq_id, True
        pending = 0
        for other in self._running:
            if other is sequence:
                continue
            shared = min(common_prefix(sequence.prompt, other.kv), wanted)
            if shared > best:
                best, source, cached_source = shared, other.seq_id, False
            if other in earlier and other.fed < len(other.prompt):
                pending = max(pending, min(common_prefix(sequence.prompt, other.prompt), wanted))
        if pending >= best + MIN_SHARED_WAIT:
            return False
        sequence.attached = True
        if best > 0:
            llama_cpp.llama_memory_seq_cp(self._memory, source, sequence.seq_id, 0, best)
            sequence.kv = sequence.prompt[:best]
            sequence.fed = sequence.position = sequence.cached_tokens = best
            self.prompt_tokens_cached += best
            if cached_source and best == len(self._cache[source]):
                # The new sequence holds every cell of the cached one now: it is redundant.
                self._cached_cells -= len(self._cache.pop(source))
                llama_cpp.llama_memory_seq_rm(self._memory, source, -1, -1)
                self._free_ids.append(source)
        return True

    def _fill_batch(self) -> int:
        """The step's tokens: every decoding sequence's last token, then prompt chunks (oldest
        prompt first), except when new prompts go first (`_prompts_first`)."""
        batch = self._batch
        count = 0

        def add(sequence: _Sequence, token: int, logits: bool) -> None:
            nonlocal count
            batch.token[count] = token
            batch.pos[count] = sequence.position
            batch.n_seq_id[count] = 1
            batch.seq_id[count][0] = sequence.seq_id
            batch.logits[count] = logits
            sequence.kv.append(token)
            sequence.position += 1
            count += 1

        # Prefix sharing first, against the cells decoded in earlier steps only.
        prefilling: list[_Sequence] = []
        waits: set[int] = set()
        for sequence in self._running:
            sequence.logits_at = -1
            if sequence.last is None and sequence.fed < len(sequence.prompt):
                if not sequence.attached and not self._attach(sequence, prefilling):
                    waits.add(sequence.seq_id)
                prefilling.append(sequence)
        ready = [s for s in prefilling if s.seq_id not in waits]
        decoding = [s for s in self._running if s.last is not None]
        skip_decoders = bool(decoding) and self._prompts_first(ready)
        if not skip_decoders:
            for sequence in decoding:
                if sequence.last is not None:
                    sequence.logits_at = count
                    add(sequence, sequence.last, True)
        self._skipped_steps = self._skipped_steps + 1 if skip_decoders else 0
        decoded = count
        budget = N_BATCH if count == 0 else min(PREFILL_CHUNK, N_BATCH - count)
        finishing: list[_Sequence] = []  # sequences whose last prompt token is in this step
        for sequence in ready:
            take = min(len(sequence.prompt) - sequence.fed, budget)
            if take <= 0:
                break
            twin = self._twin(sequence, finishing)
            if twin is not None:
                sequence.twin, sequence.logits_at = twin, twin.logits_at
                continue
            echo = sequence.request.params.prompt_logprobs
            for offset in range(take):
                at = sequence.fed + offset
                last = at == len(sequence.prompt) - 1
                if last:
                    sequence.logits_at = count
                    finishing.append(sequence)
                if echo and not last:
                    sequence.prompt_rows.append((count, at))
                add(sequence, sequence.prompt[at], last or echo)
            sequence.fed += take
            budget -= take
        batch.n_tokens = count
        if count:
            self.recent_steps.append((self.steps, decoded, count - decoded))
        return count

    def _prompts_first(self, ready: list[_Sequence]) -> bool:
        """Whether this step carries only new prompts, leaving decoding sequences for the next.

        A step costs about the same per token on a CPU, so a request arriving while eight
        streams decode would otherwise wait for a step of eight tokens plus its own. Prompts go
        first (as vLLM's scheduler puts prefills first) when all of them end in this step, so
        it is a short step, and at most PROMPTS_FIRST_STEPS times in a row: a running stream
        waits at most that many such steps between two of its tokens. A longer prompt goes in
        chunks beside the decoding.
        """
        if self._skipped_steps >= PROMPTS_FIRST_STEPS or not ready:
            return False
        return sum(len(s.prompt) - s.fed for s in ready) <= PREFILL_CHUNK

    @staticmethod
    def _twin(sequence: _Sequence, finishing: list[_Sequence]) -> _Sequence | None:
        """A sequence in this step computing the last token of the same whole prompt, when this
        one lacks only that token: both sample from its logits (as `n` choices of one prompt
        share its prefill in vLLM), so identical prompts arriving together cost one token."""
        if sequence.fed != len(sequence.prompt) - 1 or sequence.request.params.prompt_logprobs:
            return None
        for other in finishing:
            if other.prompt == sequence.prompt and not other.request.params.prompt_logprobs:
                return other
        return None

    def _copy_twins(self) -> None:
        """After the step: each twin takes the cell of the last prompt token it shared."""
        import llama_cpp

        for sequence in self._running:
            twin = sequence.twin
            if twin is None:
                continue
            sequence.twin = None
            at = len(sequence.prompt) - 1
            llama_cpp.llama_memory_seq_cp(self._memory, twin.seq_id, sequence.seq_id, at, at + 1)
            sequence.kv.append(sequence.prompt[at])
            sequence.fed = sequence.position = at + 1
            sequence.cached_tokens += 1
            self.prompt_tokens_cached += 1

    def _logprobs_at(self, index: int) -> Any:
        """The log-probabilities of the next token from row `index` of the last decode."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return log_softmax(np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)))

    def _entry(self, logprobs: Any, token: int, k: int) -> TokenLogprob:
        top = [(_piece(self._vocab, t), lp) for t, lp in top_entries(logprobs, k)]
        return token_entry(_piece(self._vocab, token), float(logprobs[token]), top)

    def _prompt_logprobs(self, sequence: _Sequence) -> None:
        """Each prompt token's log-probability given the tokens before it (echo)."""
        params = sequence.request.params
        if sequence.prompt_logprobs is None:
            first = sequence.prompt[0]
            sequence.prompt_logprobs = [token_entry(_piece(self._vocab, first), None)]
        rows = list(sequence.prompt_rows)
        if sequence.logits_at >= 0:
            rows.append((sequence.logits_at, len(sequence.prompt) - 1))
        for index, position in rows:
            if position + 1 < len(sequence.prompt):
                logprobs = self._logprobs_at(index)
                token = sequence.prompt[position + 1]
                sequence.prompt_logprobs.append(self._entry(logprobs, token, params.top_logprobs))
        sequence.prompt_rows.clear()

    def _sample(self) -> None:
        import llama_cpp

        for sequence in list(self._running):
            params = sequence.request.params
            if params.prompt_logprobs and sequence.last is None:
                self._prompt_logprobs(sequence)
            if sequence.logits_at < 0:
                continue  # a prompt still being prefilled
            if params.max_tokens == 0:  # the prompt's logprobs were all that was asked
                self._finish(sequence, "length")
                continue
            logprobs = self._logprobs_at(sequence.logits_at) if params.logprobs else None
            token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, sequence.logits_at)
            sequence.completion_tokens += 1
            if logprobs is not None:  # the end token too: it is a completion token (vLLM's way)
                if sequence.logprobs is None:
                    sequence.logprobs = []
                sequence.logprobs.append(self._entry(logprobs, token, params.top_logprobs))
            if sequence.first_token_steps is None:
                sequence.first_token_steps = self.steps - sequence.submitted_step
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                self._finish(sequence, "stop")
                continue
            piece = sequence.decoder.decode(_piece(self._vocab, token))
            sequence.last = token
            if piece:
                before = len(sequence.text)
                sequence.text += piece
                if params.stop:
                    window = max(len(s) for s in params.stop) + len(piece)
                    tail = sequence.text[max(0, before - window) :]
                    if any(stop in tail for stop in params.stop):
                        self._finish(sequence, "stop")
                        continue
                if sequence.logprobs is not None:
                    # The entries of every token since the last piece (a token that ended
                    # half a character sent no piece of its own).
                    fresh = sequence.logprobs[sequence.logprobs_sent :]
                    sequence.logprobs_sent = len(sequence.logprobs)
                    self._send(sequence.job, Piece(piece, fresh))
                else:
                    self._send(sequence.job, piece)
            if sequence.completion_tokens >= params.max_tokens:
                self._finish(sequence, "length")

    def _finish(
        self,
        sequence: _Sequence,
        reason: FinishReason | None,
        error: BaseException | None = None,
    ) -> None:
        import llama_cpp

        self._running.remove(sequence)
        llama_cpp.llama_sampler_free(sequence.sampler)
        self._reserved -= sequence.reserved
        if error is None and sequence.kv and not self._closed:
            # Keep its cells for the next request that starts the same way (the newest last).
            self._cache[sequence.seq_id] = sequence.kv
            self._cached_cells += len(sequence.kv)
            while len(self._cache) > CACHED_SEQUENCES:
                self._evict_oldest()
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._free_ids.append(sequence.seq_id)
        if error is not None:
            self._send(sequence.job, error)
            return
        # Bytes of a character the model never finished are dropped, not shown as U+FFFD:
        # an answer cut by max_tokens ends on a whole character.
        text, _ = cut_at_stop(sequence.text, sequence.request.params.stop)
        params = sequence.request.params
        result = GenerationResult(
            text=text,
            finish_reason=reason or "stop",
            prompt_tokens=len(sequence.prompt),
            completion_tokens=sequence.completion_tokens,
            logprobs=(sequence.logprobs or []) if params.logprobs else None,
            prompt_logprobs=sequence.prompt_logprobs if params.prompt_logprobs else None,
            cached_tokens=sequence.cached_tokens,
            first_token_steps=sequence.first_token_steps,
        )
        if self.on_result is not None:
            # Counted here, not by the request: a client that left still cost these tokens.
            self.on_result(sequence.request, result)
        self._send(sequence.job, result)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
            self._submitted_at.clear()
        for job in waiting:
            self._send(job, error)
        for sequence in list(self._running):
            self._finish(sequence, None, error)
        self._flush()

    def _free(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)


def _deliver(items: list[tuple[Job, Any]]) -> None:
    """On the event loop: put a step's events on their requests' queues."""
    for job, item in items:
        job.events.put_nowait(item)


# --------------------------------------------------------------------------- loading


def cpu_threads(configured: int) -> int:
    """The configured thread count, or every core this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def load_llamacpp(
    name: str,
    gguf_path: Path,
    *,
    threads: int,
    kv_tokens: int,
    slots: int,
    limit: Callable[[], int],
    on_result: Callable[[PreparedRequest, GenerationResult], None] | None = None,
) -> tuple[LlamaCppEngine, LlamaCppTokenizer, int]:
    """Load a GGUF file into a llama.cpp context; returns the engine, tokenizer and context.

    Blocking (seconds): runs in the registry's loading thread. The context length a request may
    use is the model's training context capped by the KV cache the deployment shares.
    """
    import llama_cpp

    # llama.cpp logs every tensor at load through llama-cpp-python's logger; errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llama_cpp.llama_backend_init()
    started = time.monotonic()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
    if not model:
        raise ValueError(f"llama.cpp could not load {gguf_path.name}")
    try:
        trained = int(llama_cpp.llama_model_n_ctx_train(model)) or kv_tokens
        context_length = min(trained, kv_tokens)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = slots
        params.kv_unified = True  # one KV pool: a long request may use what short ones leave
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        context = llama_cpp.llama_init_from_model(model, params)
        if not context:
            raise ValueError(f"llama.cpp could not create a context for {gguf_path.name}")
    except BaseException:
        llama_cpp.llama_model_free(model)
        raise
    vocab = llama_cpp.llama_model_get_vocab(model)
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    eos = int(llama_cpp.llama_vocab_eos(vocab))
    template = llama_cpp.llama_model_chat_template(model, None)
    tokenizer = LlamaCppTokenizer(
        vocab,
        chat_template=template.decode("utf-8", errors="replace") if template else None,
        bos_token_id=bos if bos >= 0 else None,
        eos_token_id=eos if eos >= 0 else None,
        bos_token=_piece(vocab, bos, special=True).decode("utf-8", "replace") if bos >= 0 else "",
        eos_token=_piece(vocab, eos, special=True).decode("utf-8", "replace") if eos >= 0 else "",
    )
    tokenizer.max_token_chars = max_piece_bytes(vocab)
    engine = LlamaCppEngine(
        name,
        model,
        context,
        slots=slots,
        kv_tokens=kv_tokens,
        limit=limit,
        on_result=on_result,
    )
    logger.info(
        "llama.cpp loaded %s (%s threads, %s KV tokens, %s slots) in %.1f s",
        gguf_path.name,
        threads,
        kv_tokens,
        slots,
        time.monotonic() - started,
    )
    return engine, tokenizer, context_length


def max_piece_bytes(vocab: Any) -> int:
    """The longest text one token stands for, in bytes (bounds characters per token)."""
    import llama_cpp

    return max(
        (len(_piece(vocab, t)) for t in range(int(llama_cpp.llama_vocab_n_tokens(vocab)))),
        default=1,
    )
