"""Guards in front of every route: origin checks (cross-site, DNS rebinding) and size limits."""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
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
        from app.core.error_handlers import error_body, upload_limit_message

        for key, value in scope["headers"]:
            if key.lower() == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    body = error_body(
                        scope["path"],
                        413,
                        upload_limit_message(self.max_bytes),
                        code="payload_too_large",
                    )
                    await JSONResponse(body, status_code=413)(scope, receive, send)
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
