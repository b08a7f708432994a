"""Jinja2 environment and the helpers every page uses (one template serves page and fragment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import Response

from app.services.sessions import csrf_token

PROJECT_ROOT = Path(__file__).resolve().parents[2]
templates = Jinja2Templates(directory=str(PROJECT_ROOT / "templates"))


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *,
    status_code: int = 200, block: str | None = None,
) -> Response:
    """Render a page, or only `block` of it when htmx asks for a fragment."""
    ctx = {"request": request, "csrf_token": csrf_token(request), **(context or {})}
    if block and is_htmx(request):
        tmpl = templates.get_template(template)
        html = "".join(tmpl.blocks[block](tmpl.new_context(ctx)))
        from starlette.responses import HTMLResponse

        return HTMLResponse(html, status_code=status_code)
    return templates.TemplateResponse(request, template, ctx, status_code=status_code)


def render_error_page(request: Request, status_code: int, message: str) -> Response:
    return render(
        request, "error.html", {"status_code": status_code, "message": message},
        status_code=status_code,
    )
