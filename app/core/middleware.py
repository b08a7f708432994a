"""Guards in front of every route: origin checks (cross-site, DNS rebinding) and size limits."""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class OriginCheckMiddleware:
    """Refuse state-changing requests whose Origin is not this server (cross-site or rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            origin = headers.get("origin")
            if origin and origin != "null":
                host = headers.get("host", "")
                if urlsplit(origin).netloc.lower() != host.lower():
                    response = JSONResponse(
                        {"detail": f"cross-origin request from {origin} refused"}, status_code=403
                    )
                    await response(scope, receive, send)
                    return
            elif origin == "null":
                response = JSONResponse(
                    {"detail": "requests from an opaque origin are refused"}, status_code=403
                )
                await response(scope, receive, send)
                return
        if scope["type"] == "websocket":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            origin = headers.get("origin")
            if origin and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                await send({"type": "websocket.close", "code": 4403})
                return
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with a readable 413, reading none of an oversized one.

    A declared Content-Length over the limit is answered at once; a body that lies about its
    length (or streams without one) is cut off as soon as it passes the limit, by raising
    HTTPException(413) from inside the route's read, which the error handlers then shape.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from app.core.error_handlers import error_response, upload_limit_message

        for key, value in scope["headers"]:
            if key.lower() == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    # JSON for API clients, the error page for a browser's form post (an
                    # import or upload form sent without JavaScript), never raw JSON there.
                    response = error_response(
                        Request(scope, receive),
                        413,
                        upload_limit_message(self.max_bytes),
                        code="payload_too_large",
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, counting_receive, send)


def _json_content_type(scope: Scope) -> bool | None:
    """True for a JSON content type, False for another, None for none at all (FastAPI then
    parses JSON too, while a chunk upload without one streams: sniff its first byte)."""
    for key, value in scope["headers"]:
        if key.lower() == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return None


class JsonBodyGuardMiddleware:
    """Refuse JSON request bodies no route could use safely, before any route parses them.

    One check for every JSON endpoint (`app/core/safe_json.py`): nesting deeper than 64
    levels, a lone UTF-16 surrogate (it would fail later, when the value is stored, echoed or
    sent on as UTF-8) and absurd key counts (a million unknown keys took 12 s to validate and
    produced a 40 MB error). The body is read once here and handed on unchanged; it is bounded
    by BodySizeLimitMiddleware outside this one, and FastAPI buffers JSON bodies anyway.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _json_content_type(scope) if scope["type"] == "http" else False
        if declared is False or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        sniffing = declared is None
        from app.core import safe_json
        from app.core.error_handlers import error_body, upload_limit_message

        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except HTTPException as exc:  # the size limit, raised by the outer middleware
                from app.core.settings import get_settings

                limit = upload_limit_message(get_settings().max_upload_bytes)
                body = error_body(scope["path"], exc.status_code, limit, code="payload_too_large")
                await JSONResponse(body, status_code=exc.status_code)(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if sniffing and (head := b"".join(chunks).lstrip()):
                sniffing = False
                if head[:1] not in (b"{", b"[", b'"'):  # not JSON: stream it on untouched
                    first: Message = {
                        "type": "http.request",
                        "body": b"".join(chunks),
                        "more_body": message.get("more_body", False),
                    }
                    await self.app(scope, _replay([first], receive), send)
                    return
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        reason = safe_json.refusal(raw) if raw else None
        if reason is not None:
            body = error_body(scope["path"], 400, f"the JSON body {reason}", code="invalid_json")
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        replayed: Message = {"type": "http.request", "body": raw, "more_body": False}
        await self.app(scope, _replay([replayed], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that first hands out `messages`, then waits on the real one (disconnects)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# The client address of the request being handled, for the audit log: services record events
# without each taking the request as a parameter. A ContextVar set here (outermost, in the
# request's own task) is seen by the endpoint, also in the thread pool (Starlette copies the
# context into it).
client_ip: ContextVar[str | None] = ContextVar("client_ip", default=None)


class ClientAddressMiddleware:
    """Make the request's client address available to the audit log (see `client_ip`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = client_ip.set(client[0] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            client_ip.reset(token)


# Nothing here is meant to be shown inside another site's frame: a framed dashboard invites
# clickjacking (a hidden "Deploy" or "Remove member" button under a decoy). Both headers: old
# browsers read X-Frame-Options, current ones CSP's frame-ancestors.
FRAME_GUARD_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


class FrameGuardMiddleware:
    """Forbid framing on every HTTP answer, errors and static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                headers += [(k, v) for k, v in FRAME_GUARD_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_guarded)
