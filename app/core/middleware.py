"""Origin checks for every state-changing request and websocket (cross-site and DNS rebinding)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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
                response = JSONResponse({"detail": "requests from an opaque origin are refused"},
                                        status_code=403)
                await response(scope, receive, send)
                return
        if scope["type"] == "websocket":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            origin = headers.get("origin")
            if origin and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                await send({"type": "websocket.close", "code": 4403})
                return
        await self.app(scope, receive, send)
