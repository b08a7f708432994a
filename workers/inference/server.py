"""The inference server's HTTP API: deployments (load/unload/list), generation, health, metrics.

Only the web process talks to it, over 127.0.0.1 or the compose network, with a shared secret
header; it imports nothing of the web app but its settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.instance import INSTANCE_HEADER
from app.core.settings import Settings, get_settings
from datacontract import ner
from workers.inference import embeddings, generation
from workers.inference.generation import (
    EngineBusy,
    GenerationFailed,
    GenerationResult,
    ModelNotReady,
    PreparedRequest,
    PromptRejected,
    prepare_request,
)
from workers.inference.metrics import InferenceMetrics
from workers.inference.registry import (
    InvalidModelName,
    LoadedModel,
    ModelPathRefused,
    ModelRegistry,
)
from workers.inference.schemas import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    LoadRequest,
    ModelRead,
    PredictRequest,
    PredictResponse,
)

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-LLMIDE-Internal"
DEFAULT_LOAD_WAIT_S = 120.0


class InferenceState:
    """What the routes share: settings, the model registry, metrics and the load wait limit."""

    def __init__(self, settings: Settings, load_wait_s: float) -> None:
        self.settings = settings
        self.token = settings.internal_token
        self.registry = ModelRegistry(settings)
        self.metrics = InferenceMetrics()
        self.load_wait_s = load_wait_s
        self.registry.on_batch = self.metrics.batch_size.observe
        self.registry.on_result = self._count_result

    def _count_result(self, name: str, request: PreparedRequest, result: GenerationResult) -> None:
        """Every decoded row, finished or cancelled: tokens actually generated, cancellations."""
        self.metrics.prompt_tokens.labels(name).inc(result.prompt_tokens)
        self.metrics.completion_tokens.labels(name).inc(result.completion_tokens)
        if result.cached_tokens:
            self.metrics.prompt_tokens_cached.labels(name).inc(result.cached_tokens)
        if result.first_token_steps is not None:
            self.metrics.steps_to_first_token.labels(name).observe(result.first_token_steps)
        if request.cancelled:
            self.metrics.cancelled.labels(name).inc()


class InstanceHeaderMiddleware:
    """Adds the installation id to every answer (pure ASGI: streaming stays untouched)."""

    def __init__(self, app: ASGIApp, instance: str) -> None:
        self.app = app
        self.header = (INSTANCE_HEADER.lower().encode(), instance.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def get_state(request: Request) -> InferenceState:
    return request.app.state.inference


StateDep = Annotated[InferenceState, Depends(get_state)]


def require_internal_token(
    state: StateDep,
    token: Annotated[str | None, Header(alias=TOKEN_HEADER)] = None,
) -> None:
    """Only the web process (which derives the same secret) may drive this server."""
    if token is None or not secrets.compare_digest(token.encode(), state.token.encode()):
        raise HTTPException(status_code=401, detail=f"missing or wrong {TOKEN_HEADER} header")


router = APIRouter(dependencies=[Depends(require_internal_token)])


def _ensure(
    state: InferenceState,
    name: str,
    path: str,
    *,
    retry_failed: bool | str,
    replicas: int | None = None,
    max_batch_size: int | None = None,
    embedding: bool = False,
) -> LoadedModel:
    try:
        return state.registry.ensure(
            name,
            path,
            retry_failed=retry_failed,
            replicas=replicas,
            max_batch_size=max_batch_size,
            embedding=embedding,
        )
    except (ModelPathRefused, InvalidModelName) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


async def get_ready_model(
    state: InferenceState,
    name: str,
    path: str | None,
    body: Any = None,
    *,
    embedding: bool = False,
) -> LoadedModel:
    """The named model once it is ready, loading it from `path` first if needed; else raise.

    404: not loaded and no path; 409: still loading after the wait limit; 424: load failed.
    """
    if path is not None:
        # A failed load is retried once its back-off delay has passed, not on every request.
        found = state.registry.get(name)
        if (
            found is not None
            and found.path == path
            and found.status != "failed"
            and found.embedding == embedding
        ):
            entry = found  # the usual case: no path resolution on every request
        else:
            entry = _ensure(
                state,
                name,
                path,
                retry_failed="when_due",
                replicas=getattr(body, "replicas", None),
                max_batch_size=getattr(body, "max_batch_size", None),
                embedding=embedding,
            )
    else:
        found = state.registry.get(name)
        if found is None:
            raise HTTPException(
                status_code=404, detail=f"model {name!r} is not loaded and no path was given"
            )
        entry = found
    deadline = time.monotonic() + state.load_wait_s
    # Polling, not Event.wait in a thread: waiting requests must not hold executor threads.
    while entry.status == "loading":
        if time.monotonic() >= deadline:
            raise HTTPException(
                status_code=409,
                detail=f"model {name!r} is still loading after {state.load_wait_s:.0f} s; "
                "retry shortly",
            )
        await asyncio.sleep(0.05)
    if entry.status == "failed":
        # Not a 503: a broken model does not mend by waiting, so no client should be told to
        # retry (424: what the request depends on, the load, failed). Deploying it again
        # (PUT /models/{name}) retries the load.
        raise HTTPException(
            status_code=424,
            detail=f"model {name!r} failed to load: {entry.error}; it serves nothing until it "
            "is deployed again or a retry of the load succeeds",
        )
    return entry


@router.get("/models", response_model=list[ModelRead])
async def list_models(state: StateDep) -> list[dict[str, Any]]:
    return [entry.describe() for entry in state.registry.entries()]


@router.get("/models/{name:path}", response_model=ModelRead)
async def read_model(name: str, state: StateDep) -> dict[str, Any]:
    entry = state.registry.get(name)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"model {name!r} is not loaded")
    return entry.describe()


@router.put("/models/{name:path}", response_model=ModelRead)
async def load_model(name: str, body: LoadRequest, state: StateDep) -> JSONResponse:
    """Start loading (202) or report the model already there with this path (200)."""
    entry = _ensure(
        state,
        name,
        body.path,
        retry_failed=True if body.retry == "now" else "when_due",
        replicas=body.replicas,
        max_batch_size=body.max_batch_size,
    )
    status_code = 202 if entry.status == "loading" else 200
    return JSONResponse(entry.describe(), status_code=status_code)


@router.delete("/models/{name:path}")
async def unload_model(name: str, state: StateDep) -> dict[str, Any]:
    entry = state.registry.unload(name)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"model {name!r} is not loaded")
    return {"name": name, "path": entry.path, "status": "unloaded"}


RETRY_AFTER = {"Retry-After": "2"}


def _unavailable(detail: str) -> HTTPException:
    """503 with Retry-After: the model is going away or coming back; the client should retry."""
    return HTTPException(status_code=503, detail=detail, headers=RETRY_AFTER)


def _require_kind(entry: LoadedModel, kind: str) -> None:
    if entry.kind != kind:
        other = {"classifier": "/predict", "embedding": "/embed"}.get(entry.kind, "/generate")
        raise HTTPException(
            status_code=400,
            detail=f"model {entry.name!r} is a {entry.kind} model; use {other} for it",
        )


# Logprobs only when asked for: the answer carries no null fields.
@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, state: StateDep) -> Response | dict[str, Any]:
    arrived = time.perf_counter()
    entry = await get_ready_model(state, body.name, body.path, body)
    _require_kind(entry, "causal-lm")
    try:
        prepared = await asyncio.to_thread(
            prepare_request,
            entry,
            prompt=body.prompt,
            messages=body.message_dicts(),
            params=body.sampling(),
            budget=body.budget(),
            prompt_ids=body.prompt_ids,
            tools=body.tools,
        )
    except PromptRejected as exc:
        if exc.code is None and exc.param is None:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        # The web facade turns this into OpenAI's error with its code and param.
        detail = {"message": str(exc), "code": exc.code, "param": exc.param}
        raise HTTPException(status_code=400, detail=detail) from exc
    except ModelNotReady as exc:
        raise _unavailable(str(exc)) from exc
    except Exception as exc:  # a chat template that cannot render these messages, say
        raise HTTPException(status_code=400, detail=f"cannot build the prompt: {exc}") from exc
    try:
        # Submitted before any response starts: a full deployment is a 429, not a stream error.
        job = generation.submit(entry, prepared)
    except EngineBusy as exc:
        state.metrics.model_requests.labels(entry.name, "busy").inc()
        raise HTTPException(
            status_code=429,
            detail={"message": str(exc), "code": "rate_limit_exceeded", "param": None},
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except ModelNotReady as exc:
        raise _unavailable(str(exc)) from exc
    tracker = _Tracker(state, entry, arrived, stream=body.stream)
    if body.stream:
        return ClosingStreamingResponse(
            _sse_events(tracker, entry, prepared, job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            on_close=prepared.cancel.set,
        )
    try:
        result = await generation.generate(entry, prepared, job)
    except ModelNotReady as exc:
        tracker.failed()
        raise _unavailable(str(exc)) from exc
    except GenerationFailed as exc:
        tracker.failed()
        raise HTTPException(status_code=500, detail=str(exc)) from exc
    except asyncio.CancelledError:
        tracker.finish(None, cancelled=True)
        raise
    tracker.first_token()
    tracker.finish(result, cancelled=prepared.cancelled)
    return {**result.as_dict(), "trimmed_messages": prepared.trimmed}


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator however the response ends, a client disconnect included.

    Starlette stops iterating when a send fails but leaves the generator to the garbage
    collector; closing it here runs its `finally` at once, which cancels the generation.
    `on_close` runs too: a generator that never started has no `finally` to run, and its
    request is already submitted.
    """

    def __init__(self, *args: Any, on_close: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                self.on_close()


class _Tracker:
    """Per-request bookkeeping: Prometheus series and the deployment's dashboard figures."""

    def __init__(
        self, state: InferenceState, entry: LoadedModel, arrived: float, *, stream: bool
    ) -> None:
        self.metrics = state.metrics
        self.entry = entry
        self.arrived = arrived
        self.stream = stream
        self.ttft: float | None = None
        self.done = False

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.arrived
            self.metrics.ttft.labels(self.entry.name).observe(self.ttft)

    def failed(self) -> None:
        if self.done:
            return
        self.done = True
        self.entry.stats.errors += 1
        self.metrics.model_requests.labels(self.entry.name, "error").inc()

    def finish(self, result: GenerationResult | None, *, cancelled: bool) -> None:
        if self.done:
            return
        self.done = True
        name = self.entry.name
        elapsed = time.perf_counter() - self.arrived
        self.metrics.model_requests.labels(name, "cancelled" if cancelled else "ok").inc()
        self.metrics.model_latency.labels(name).observe(elapsed)
        self.metrics.generation_seconds.labels(name, str(self.stream).lower()).observe(elapsed)
        if result is None:
            return
        # Decoding time: from the first token on (a request's own wait and prefill excluded).
        decode_s = elapsed - (self.ttft or 0.0)
        tokens = max(0, result.completion_tokens - 1)
        self.entry.stats.record(
            latency=elapsed, ttft=self.ttft, tokens=tokens, decode_s=decode_s if tokens else 0.0
        )


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _sse_events(
    tracker: _Tracker, entry: LoadedModel, prepared: PreparedRequest, job: generation.Job
) -> AsyncIterator[str]:
    """Server-sent events: deltas, then a final usage event, then [DONE].

    Errors after the headers went out cannot change the status code, so they become an
    `{"error": {"status_code", "detail"}}` event before [DONE]. When the client goes away the
    response stops iterating this generator; closing it cancels the request's row.
    """
    events = generation.stream(entry, prepared, job)
    sent = ""  # the deltas so far: the final text's rest is sent before the final event
    try:
        async for item in events:
            if isinstance(item, str):
                tracker.first_token()
                sent += item
                logprobs = getattr(item, "logprobs", None)
                yield _sse({"delta": item, "logprobs": logprobs} if logprobs else {"delta": item})
            else:
                # What the streamer held back (bytes that never made a whole character, say)
                # is part of the whole answer: a stream must add up to the same text.
                if item.text.startswith(sent) and len(item.text) > len(sent):
                    yield _sse({"delta": item.text[len(sent) :]})
                tracker.finish(item, cancelled=prepared.cancelled)
                final = item.as_dict()
                del final["text"]
                yield _sse({**final, "trimmed_messages": prepared.trimmed})
    except (ModelNotReady, GenerationFailed) as exc:
        status = 503 if isinstance(exc, ModelNotReady) else 500
        tracker.failed()
        tracker.metrics.errors.labels("/generate", "stream").inc()
        yield _sse({"error": {"status_code": status, "detail": str(exc)}})
    finally:
        await events.aclose()
        if not tracker.done:
            # The client left mid-stream: the row was cancelled; count it once it stopped.
            tracker.finish(None, cancelled=True)
    yield _sse("[DONE]")


@router.post("/predict", response_model=PredictResponse)
async def predict(body: PredictRequest, state: StateDep) -> dict[str, Any]:
    """Labels and scores (softmax) from a sequence-classification model, or entities with
    their character offsets from a token-classification (NER) model."""
    arrived = time.perf_counter()
    entry = await get_ready_model(state, body.name, body.path, body)
    _require_kind(entry, "classifier")
    tracker = _Tracker(state, entry, arrived, stream=False)
    try:
        predictions = await asyncio.to_thread(classify, entry, body.texts())
    except ModelNotReady as exc:
        tracker.failed()
        raise _unavailable(str(exc)) from exc
    tracker.first_token()
    tracker.finish(None, cancelled=False)
    return {"predictions": predictions}


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, state: StateDep) -> dict[str, Any]:
    """Unit-length embeddings (mean-pooled last hidden states) of texts or token arrays."""
    arrived = time.perf_counter()
    entry = await get_ready_model(state, body.name, body.path, body, embedding=True)
    _require_kind(entry, "embedding")
    tracker = _Tracker(state, entry, arrived, stream=False)
    try:
        ids = await asyncio.to_thread(embeddings.token_ids, entry, body.inputs)
        vectors = await asyncio.to_thread(embeddings.embed, entry, ids)
    except embeddings.EmbeddingRefused as exc:
        tracker.failed()
        detail = {"message": str(exc), "code": exc.code, "param": exc.param}
        raise HTTPException(status_code=400, detail=detail) from exc
    tracker.first_token()
    tracker.finish(None, cancelled=False)
    return {"embeddings": vectors, "prompt_tokens": sum(len(row) for row in ids)}


def classify(entry: LoadedModel, texts: list[str]) -> list[dict[str, Any]]:
    """Blocking: run the classifier on a batch of texts (truncated to its context)."""
    import torch

    model, tokenizer = entry.model, entry.tokenizer
    if model is None or tokenizer is None:
        raise ModelNotReady(f"model {entry.name!r} was unloaded")
    if type(model).__name__.endswith("ForTokenClassification"):
        return find_entities(entry, texts)
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=entry.context_length or 512,
        return_tensors="pt",
    ).to(entry.device)
    with torch.inference_mode():
        probs = torch.softmax(model(**encoded).logits.float(), dim=-1).tolist()
    labels = entry.labels
    out = []
    for row in probs:
        scores = {labels[i]: float(p) for i, p in enumerate(row)}
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "score": float(row[best]), "scores": scores})
    return out


def find_entities(entry: LoadedModel, texts: list[str]) -> list[dict[str, Any]]:
    """Blocking: the entities of each text, as character spans into it.

    Offsets come from the fast tokenizer's offset mapping and are read per word
    (datacontract.ner.entities_from_tokens), so they index the text the caller sent, Chinese
    included. Text past the model's context is not read (no entity is reported there).
    """
    import torch

    model, tokenizer = entry.model, entry.tokenizer
    assert model is not None and tokenizer is not None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotReady(f"model {entry.name!r} has no fast tokenizer (no character offsets)")
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=entry.context_length or 512,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    offsets = encoded.pop("offset_mapping").tolist()
    mask = encoded["attention_mask"].tolist()
    with torch.inference_mode():
        logits = model(**encoded.to(entry.device)).logits.float()
    best_p, best = torch.softmax(logits, dim=-1).max(dim=-1)
    tags = entry.labels
    out = []
    for row, text in enumerate(texts):
        row_offsets = [o if mask[row][i] else (0, 0) for i, o in enumerate(offsets[row])]
        entities = ner.entities_from_tokens(
            text, row_offsets, [tags[int(i)] for i in best[row].tolist()], best_p[row].tolist()
        )
        for entity in entities:
            entity["text"] = text[entity["start"] : entity["end"]]
        out.append({"entities": entities})
    return out


class MetricsMiddleware:
    """Counts requests and errors and times the first byte, per route template.

    Plain ASGI rather than @app.middleware: BaseHTTPMiddleware re-wraps streaming bodies, and
    the SSE stream must see the client's disconnect directly to cancel its generation.
    """

    def __init__(self, app: ASGIApp, metrics: InferenceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()


def _route(scope: Scope) -> str:
    # The router stores the matched route in the shared scope; its template keeps labels few.
    return str(getattr(scope.get("route"), "path", "unmatched"))


def create_app(
    *, settings: Settings | None = None, load_wait_s: float = DEFAULT_LOAD_WAIT_S
) -> FastAPI:
    """Build the server; tests call it in-process, `main()` serves it with uvicorn."""
    state = InferenceState(settings or get_settings(), load_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.registry.unload_all()

    app = FastAPI(
        title="LLM IDE inference server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.inference = state

    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    instance = state.settings.resolved_instance_id
    # Every answer says whose server this is: the web's client refuses another's.
    app.add_middleware(InstanceHeaderMiddleware, instance=instance)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "instance": instance}

    @app.get("/metrics", dependencies=[Depends(require_internal_token)])
    async def metrics() -> Response:
        gauge = state.metrics.models
        counts = {"loading": 0, "ready": 0, "failed": 0}
        for entry in state.registry.entries():
            counts[entry.status] += 1
        for status, count in counts.items():
            gauge.labels(status).set(count)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    app.include_router(router)
    return app


def main() -> None:
    """Serve on the configured host and port (`python -m workers.inference`)."""
    settings = get_settings()
    settings.ensure_dirs()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    uvicorn.run(
        create_app(settings=settings),
        host=settings.inference_host,
        port=settings.inference_port,
        log_level="info",
    )
