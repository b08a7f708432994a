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

Admission: at most `limit()` requests per deployment (running or waiting for KV room); more is
`EngineBusy` (429 with Retry-After). A request starts once its prompt plus `max_tokens` fits in
the free KV cache; the context check at preparation guarantees a lone request always fits.

llama_cpp is imported only in `load_llamacpp` and the engine's thread; nothing here is called
at import time.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import secrets
import threading
import time
from collections import deque
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
    PreparedRequest,
    SamplingParams,
    cut_at_stop,
)

logger = logging.getLogger(__name__)

N_BATCH = 512  # tokens one decode step may carry: running sequences first, then prompt chunks
MAX_SLOTS = 64  # sequences one context holds (the deployment's max_batch_size is at most 64)


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

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = True,
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
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def request(self) -> PreparedRequest:
        return self.job.request


def sampler_chain(params: SamplingParams) -> Any:
    """A llama.cpp sampler chain meaning what the OpenAI parameters mean.

    temperature 0 is greedy; otherwise temperature, then top_p (as transformers orders them),
    then a draw seeded by `seed` (a fresh random seed when none is given).
    """
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if params.temperature == 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    if params.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
        )
    seed = params.seed if params.seed is not None else secrets.randbits(32)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


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
        self._memory = llama_cpp.llama_get_memory(context)
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._free_ids = list(range(slots))
        self.kv_tokens = kv_tokens
        self._reserved = 0
        self.limit = limit
        self.on_result = on_result
        self._waiting: deque[Job] = deque()
        self._running: list[_Sequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self._waiting) + len(self._running)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ModelNotReady(f"model {self.name!r} was unloaded")
            limit = max(1, int(self.limit()))
            if self.load >= limit:
                raise EngineBusy(self.name, limit)
            self._waiting.append(job)
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
        refused: list[Job] = []
        with self._cond:
            while not self._closed and not self._running and not self._waiting:
                self._cond.wait()
            if self._closed:
                # Like a closing lane: requests already running finish, waiting ones are refused.
                refused = list(self._waiting)
                self._waiting.clear()
            else:
                self._admit()
        for job in refused:
            job.send(ModelNotReady(f"model {self.name!r} was unloaded"))
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
        if code != 0:
            # 1: no KV room (admission should prevent it); <0: invalid batch or fatal. The
            # sequences in this step cannot go on; the engine itself stays up for the next.
            error = GenerationFailed(f"generation failed: llama_decode returned {code}")
            for sequence in list(self._running):
                self._finish(sequence, None, error)
            return True
        self._sample()
        return True

    def _admit(self) -> None:
        """Start waiting requests (oldest first) while a sequence id and KV room are free."""
        while self._waiting and self._free_ids:
            job = self._waiting[0]
            request = job.request
            if request.cancel.is_set():
                self._waiting.popleft()
                request.cancelled = True
                job.send(ModelNotReady("cancelled before it started"))
                continue
            need = len(request.input_ids) + request.params.max_tokens
            if self._reserved + need > self.kv_tokens and self._running:
                return  # the oldest waits for room; later ones wait behind it (no starvation)
            self._waiting.popleft()
            self._reserved += need
            self._running.append(
                _Sequence(
                    seq_id=self._free_ids.pop(0),
                    job=job,
                    sampler=sampler_chain(request.params),
                    prompt=list(request.input_ids),
                    reserved=need,
                )
            )

    def _drop_cancelled(self) -> None:
        for sequence in list(self._running):
            if sequence.request.cancel.is_set():
                sequence.request.cancelled = True
                self._finish(sequence, "stop")

    def _fill_batch(self) -> int:
        """Every decoding sequence's last token, then prompt chunks up to N_BATCH tokens."""
        batch = self._batch
        count = 0

        def add(token: int, position: int, seq_id: int, logits: bool) -> None:
            nonlocal count
            batch.token[count] = token
            batch.pos[count] = position
            batch.n_seq_id[count] = 1
            batch.seq_id[count][0] = seq_id
            batch.logits[count] = logits
            count += 1

        for sequence in self._running:
            sequence.logits_at = -1
            if sequence.last is not None:
                sequence.logits_at = count
                add(sequence.last, sequence.position, sequence.seq_id, True)
                sequence.position += 1
        for sequence in self._running:
            remaining = len(sequence.prompt) - sequence.fed
            if sequence.last is not None or remaining <= 0:
                continue
            take = min(remaining, N_BATCH - count)
            if take <= 0:
                break
            for offset in range(take):
                last = sequence.fed + offset == len(sequence.prompt) - 1
                if last:
                    sequence.logits_at = count
                add(
                    sequence.prompt[sequence.fed + offset], sequence.position, sequence.seq_id, last
                )
                sequence.position += 1
            sequence.fed += take
        batch.n_tokens = count
        return count

    def _sample(self) -> None:
        import llama_cpp

        for sequence in list(self._running):
            if sequence.logits_at < 0:
                continue  # a prompt still being prefilled
            token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, sequence.logits_at)
            sequence.completion_tokens += 1
            params = sequence.request.params
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
                sequence.job.send(piece)
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
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        llama_cpp.llama_sampler_free(sequence.sampler)
        self._free_ids.append(sequence.seq_id)
        self._reserved -= sequence.reserved
        if error is not None:
            sequence.job.send(error)
            return
        # Bytes of a character the model never finished; the final result carries them.
        sequence.text += sequence.decoder.decode(b"", final=True)
        text, _ = cut_at_stop(sequence.text, sequence.request.params.stop)
        result = GenerationResult(
            text=text,
            finish_reason=reason or "stop",
            prompt_tokens=len(sequence.prompt),
            completion_tokens=sequence.completion_tokens,
        )
        if self.on_result is not None:
            # Counted here, not by the request: a client that left still cost these tokens.
            self.on_result(sequence.request, result)
        sequence.job.send(result)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            job.send(error)
        for sequence in list(self._running):
            self._finish(sequence, None, error)

    def _free(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)


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
