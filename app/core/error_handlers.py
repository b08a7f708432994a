"""Maps every error to one shape per surface: JSON under /api, OpenAI's under /v1, HTML."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from app.core.errors import DomainError
from app.core.settings import get_settings

RETRY_AFTER_S = 2

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "api_error",
}


# Renders the error page a browser sees: (request, status code, message) -> response.
HtmlErrorPage = Callable[[Request, int, str], Response]


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def _is_openai(request: Request) -> bool:
    return is_openai_path(request.url.path)


def error_body(
    path: str, status_code: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The JSON error of a surface: OpenAI's shape under /v1, {"detail": ...} elsewhere."""
    message = _printable(message)
    if is_openai_path(path):
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status_code, "invalid_request_error"),
                "param": param,
                "code": code,
            }
        }
    payload: dict[str, Any] = {"detail": message}
    if code:
        payload["code"] = code
    if param:
        payload["param"] = param
    return payload


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/v1", "/ws/")):
        return False
    return "text/html" in request.headers.get("accept", "")


def error_response(
    request: Request,
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    html_page: HtmlErrorPage | None = getattr(request.app.state, "html_error_page", None)
    if html_page is not None and _wants_html(request):
        return html_page(request, status_code, _printable(message))
    body = error_body(request.url.path, status_code, message, code=code, param=param)
    return JSONResponse(body, status_code=status_code, headers=headers)


# A body with a million unknown keys once produced a 40 MB error: list a few problems, each
# cut short (a message may quote the input), and count the rest.
MAX_LISTED_ERRORS = 10
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})
MAX_ERROR_CHARS = 300


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    parts = []
    first_param = None
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = [
            str(p)[:80] for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")
        ]
        where = ".".join(loc)
        # A union's member tags ("str", "list[int]") say which type failed, not which field.
        fields = [p for p in loc if "[" not in p and p not in _TYPE_TAGS]
        first_param = first_param or (fields[-1] if fields else None)
        text = f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
        parts.append(text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…")
    message = "; ".join(parts) or "invalid request"
    if len(errors) > MAX_LISTED_ERRORS:
        message += f" (and {len(errors) - MAX_LISTED_ERRORS} more problems)"
    return message, first_param


def _printable(text: str) -> str:
    """Lone surrogates (from a client's text) cannot be encoded as UTF-8: replace them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def upload_limit_message(max_bytes: int) -> str:
    return f"the request is larger than the upload limit of {max_bytes / (1024 * 1024):g} MB"


def install(app: FastAPI, *, html_error_page: HtmlErrorPage | None = None) -> None:
    """Map errors once for `app`. The HTML page for browsers is handed in by the app factory
    (the web layer renders it): core does not import the pages above it."""
    app.state.html_error_page = html_error_page

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code == 503:
            # The inference server or broker is restarting: tell clients when to try again.
            headers = {"Retry-After": str(exc.retry_after_s or RETRY_AFTER_S)}
        elif exc.retry_after_s is not None:
            headers = {"Retry-After": str(exc.retry_after_s)}
        if exc.status_code == 401 and _wants_html(request):
            from starlette.responses import RedirectResponse

            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return error_response(
            request, exc.status_code, exc.message, code=exc.code, param=exc.param, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        status = 400 if _is_openai(request) else 422
        return error_response(request, status, message, code="invalid_value", param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 413:
            message = upload_limit_message(get_settings().max_upload_bytes)
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no such page or endpoint: {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(request, exc.status_code, message, headers=exc.headers)
