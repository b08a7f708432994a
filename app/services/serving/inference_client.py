"""The web side's client of the inference server process (httpx only: never torch).

Every call sends the shared internal token; a refused connection becomes InferenceUnavailable
(the process is down or restarting) and any 4xx/5xx answer becomes InferenceError, so the
OpenAI facade can map both once.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import quote

import httpx

from app.core.instance import INSTANCE_HEADER, foreign_server_message
from app.core.settings import get_settings

TOKEN_HEADER = "X-LLMIDE-Internal"
UNAVAILABLE_MESSAGE = "the inference server is not reachable; it may be restarting, retry shortly"
# Generation on a CPU can take minutes; connecting to a local process must not.
CONTROL_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
GENERATE_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


class InferenceUnavailable(Exception):
    """The inference process did not accept the connection or dropped it mid-answer."""

    def __init__(self, message: str = UNAVAILABLE_MESSAGE) -> None:
        super().__init__(message)


class InferenceError(Exception):
    """The inference server answered with an error status; `detail` is its explanation."""

    def __init__(self, status_code: int, detail: Any, retry_after: str | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after  # the server's Retry-After header (429, 503)


class ForeignInferenceServer(InferenceUnavailable):
    """What answered is another installation's inference server (app/core/instance.py)."""


def _same_installation(expected: str, base_url: str) -> Any:
    async def check(response: httpx.Response) -> None:
        if response.headers.get(INSTANCE_HEADER) != expected:
            raise ForeignInferenceServer(foreign_server_message(base_url))

    return check


# One pooled client per event loop (a web process has one; tests and CLI calls run their own
# with asyncio.run): building an httpx client costs ~20 ms of CPU (its SSL context), more than
# the rest of a request's web-side work, and a kept-alive connection skips the TCP handshake.
# Connections idle less than uvicorn's keep-alive (5 s) so the server never closes one under us.
_Keyed = tuple[tuple[str, ...], httpx.AsyncClient]
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Keyed] = weakref.WeakKeyDictionary()
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0)


def _shared_client() -> httpx.AsyncClient:
    settings = get_settings()
    key = (settings.inference_base_url, settings.internal_token, settings.resolved_instance_id)
    loop = asyncio.get_running_loop()
    found = _CLIENTS.get(loop)
    if found is not None and found[0] == key and not found[1].is_closed:
        return found[1]
    client = httpx.AsyncClient(
        base_url=settings.inference_base_url,
        headers={TOKEN_HEADER: settings.internal_token},
        limits=_LIMITS,
        # Before any answer is read: never act on another installation's reply.
        event_hooks={
            "response": [
                _same_installation(settings.resolved_instance_id, settings.inference_base_url)
            ]
        },
    )
    _CLIENTS[loop] = (key, client)
    return client


@asynccontextmanager
async def _client(timeout: httpx.Timeout) -> AsyncIterator[_TimedClient]:
    try:
        yield _TimedClient(_shared_client(), timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
        raise InferenceUnavailable() from exc
    except httpx.ReadError as exc:
        raise InferenceUnavailable() from exc
    except httpx.TimeoutException as exc:
        raise InferenceError(504, "the inference server did not answer in time") from exc


class _TimedClient:
    """The shared client with this call's timeout on every request."""

    def __init__(self, client: httpx.AsyncClient, timeout: httpx.Timeout) -> None:
        self._client = client
        self._timeout = timeout

    async def get(self, url: str) -> httpx.Response:
        return await self._client.get(url, timeout=self._timeout)

    async def put(self, url: str, *, json: Any) -> httpx.Response:
        return await self._client.put(url, json=json, timeout=self._timeout)

    async def post(self, url: str, *, json: Any) -> httpx.Response:
        return await self._client.post(url, json=json, timeout=self._timeout)

    async def delete(self, url: str) -> httpx.Response:
        return await self._client.delete(url, timeout=self._timeout)

    def stream(self, method: str, url: str, *, json: Any) -> Any:
        return self._client.stream(method, url, json=json, timeout=self._timeout)


# An absolute path of two parts or more (a model folder, a file in a library's traceback).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"`():,;<>]+/)+([^\s/'\"`():,;<>]*)")


def without_paths(text: str) -> str:
    """The text with each absolute path cut to its last part ("model.safetensors").

    Load errors quote where the server keeps its files; that tells a person nothing they can
    act on and a stranger the server's layout.
    """
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "(a server path)", text)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return without_paths(value)
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    return value


def _detail(response: httpx.Response) -> Any:
    """The server's explanation of an error, without server paths."""
    try:
        body = response.json()
    except ValueError:
        return without_paths(response.text or response.reason_phrase)
    return _scrubbed(body.get("detail", body) if isinstance(body, dict) else body)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise InferenceError(
            response.status_code, _detail(response), response.headers.get("Retry-After")
        )
    return response.json()


def _object(response: httpx.Response) -> dict[str, Any]:
    """The server's JSON object answer (every endpoint but GET /models answers one)."""
    return cast("dict[str, Any]", _checked(response))


def _model_url(name: str) -> str:
    return "/models/" + quote(name, safe="")


async def ensure_loaded(
    name: str,
    path: str,
    *,
    replicas: int | None = None,
    max_batch_size: int | None = None,
    retry: str = "now",
) -> dict[str, Any]:
    """Ask the server to load `path` as `name` (idempotent; new replicas / batch size are applied
    in place); returns its status, e.g. "loading". A failed load is retried at once (`retry`
    "now") or only once the server's back-off delay has passed ("when_due")."""
    body: dict[str, Any] = {"path": path, "retry": retry}
    if replicas is not None:
        body["replicas"] = replicas
    if max_batch_size is not None:
        body["max_batch_size"] = max_batch_size
    async with _client(CONTROL_TIMEOUT) as client:
        return _object(await client.put(_model_url(name), json=body))


async def predict(
    name: str, path: str | None, inputs: str | list[str], **load: Any
) -> dict[str, Any]:
    """Labels and scores from a classification model: {"predictions": [{label, score, scores}]}."""
    body = {"name": name, "path": path, "inputs": inputs, **load}
    async with _client(GENERATE_TIMEOUT) as client:
        return _object(await client.post("/predict", json=body))


async def embed(name: str, path: str | None, inputs: list[str] | list[list[int]]) -> dict[str, Any]:
    """Unit-length embeddings of texts or token arrays: {"embeddings", "prompt_tokens"}; the
    model is loaded for embeddings from `path` first if the server does not hold it yet."""
    body = {"name": name, "path": path, "inputs": inputs}
    async with _client(GENERATE_TIMEOUT) as client:
        return _object(await client.post("/embed", json=body))


async def model_status(name: str) -> dict[str, Any]:
    """One deployment's status; InferenceError(404) if the server does not hold it."""
    async with _client(CONTROL_TIMEOUT) as client:
        return _object(await client.get(_model_url(name)))


async def unload(name: str) -> dict[str, Any]:
    """Drop a deployment and free its memory; InferenceError(404) if it is not loaded."""
    async with _client(CONTROL_TIMEOUT) as client:
        return _object(await client.delete(_model_url(name)))


async def list_loaded() -> list[dict[str, Any]]:
    """Every deployment the server holds: name, path, status, error, loaded_at."""
    async with _client(CONTROL_TIMEOUT) as client:
        entries = cast("list[dict[str, Any]]", _checked(await client.get("/models")))
    for entry in entries:  # a failed load's error is recorded on the deployment and shown
        if isinstance(entry.get("error"), str):
            entry["error"] = without_paths(entry["error"])
    return entries


def _body(name: str, path: str | None, params: dict[str, Any], stream: bool) -> dict[str, Any]:
    body = {key: value for key, value in params.items() if value is not None}
    body.update(name=name, path=path, stream=stream)
    return body


async def generate(name: str, path: str | None, **params: Any) -> dict[str, Any]:
    """One completion: params are prompt | messages, max_tokens, temperature, top_p, stop, seed.

    Returns {"text", "finish_reason", "prompt_tokens", "completion_tokens"}. The model is
    loaded from `path` first if the server does not hold it yet.
    """
    async with _client(GENERATE_TIMEOUT) as client:
        return _object(await client.post("/generate", json=_body(name, path, params, False)))


async def generate_stream(
    name: str, path: str | None, **params: Any
) -> AsyncGenerator[dict[str, Any], None]:
    """Stream a completion: yields {"delta": str} events, then {"finish_reason", "prompt_tokens",
    "completion_tokens"}; stops at [DONE]. An error event raises InferenceError.

    Closing the iterator early closes the connection, which cancels the generation.
    """
    async with (
        _client(GENERATE_TIMEOUT) as client,
        client.stream("POST", "/generate", json=_body(name, path, params, True)) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            raise InferenceError(
                response.status_code, _detail(response), response.headers.get("Retry-After")
            )
        done = False
        async for line in response.aiter_lines():
            # After [DONE] the body is read to its end: a response read to its end gives its
            # connection back to the pool; one left half-read is closed, and the next request
            # would pay for a new connection on both sides (~1 ms of CPU in each process).
            if done or not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
                raise InferenceError(int(error.get("status_code", 500)), error.get("detail"))
            yield event
