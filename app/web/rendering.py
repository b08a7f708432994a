"""Jinja2 environment and the helpers every page uses (one template serves page and fragment)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from app.services.registry import kind as model_kind
from app.services.workspaces.sessions import csrf_token

PROJECT_ROOT = Path(__file__).resolve().parents[2]
templates = Jinja2Templates(directory=str(PROJECT_ROOT / "templates"))


def is_htmx(request: Request) -> bool:
    """An htmx request wanting a fragment (a history restore wants the whole page)."""
    return (
        request.headers.get("hx-request") == "true"
        and request.headers.get("hx-history-restore-request") != "true"
    )


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    block: str | Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Render a page, or only `block` (one name or several, concatenated) when htmx asks.

    Several blocks let one answer carry the swapped fragment plus out-of-band updates
    (`hx-swap-oob`) of other parts of the same page.
    """
    ctx = {
        "request": request,
        "csrf_token": csrf_token(request),
        # The signed-in person's navigation facts (set by the page dependency), if any.
        "nav": getattr(request.state, "nav", None),
        **(context or {}),
    }
    # The shared macros as `m`, bound to this request's context: available to whole pages and to
    # blocks rendered alone (a block does not run its template's top-level imports).
    ctx["m"] = templates.env.get_template("_macros.html").make_module(ctx)
    if block is not None and is_htmx(request):
        tmpl = templates.get_template(template)
        names = [block] if isinstance(block, str) else list(block)
        jinja_ctx = tmpl.new_context({**ctx, "fragment": True})
        html = "".join("".join(tmpl.blocks[name](jinja_ctx)) for name in names)
        response: Response = HTMLResponse(html, status_code=status_code, headers=headers)
    else:
        response = templates.TemplateResponse(
            request, template, ctx, status_code=status_code, headers=headers
        )
    if block is not None:
        # The same URL answers a full page or a fragment: caches must keep them apart.
        response.headers["Vary"] = "HX-Request"
    return response


def render_error_page(request: Request, status_code: int, message: str) -> Response:
    # A page outside the routes (a mistyped URL) has no signed-in context; the session cookie
    # still tells whether to offer the dashboard rather than "Sign in" (a stale cookie only
    # leads to the sign-in page one step later).
    signed_in = "session" in request.scope and request.session.get("user_id") is not None
    return render(
        request,
        "error.html",
        {"status_code": status_code, "message": message, "signed_in": signed_in},
        status_code=status_code,
    )


# --- filters ------------------------------------------------------------------------------
def _filesize(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _datetime(value: datetime | None) -> str:
    # Stored times are naive UTC.
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.3g}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _percent(step: int | None, total: int | None) -> int:
    if not total or not step:
        return 0
    return max(0, min(100, round(100 * step / total)))


def _breakable(value: Any) -> Markup:
    """Escape, then allow line breaks after ':' (long serving names on narrow screens)."""
    return Markup(str(escape(str(value))).replace(":", ":<wbr>"))


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


# Human names for the dataset schemas (badges capitalise their text: "Prompt_completion").
SCHEMA_NAMES = {
    "text": "text",
    "txt": "plain text",
    "chat": "chat",
    "prompt_completion": "prompt / completion",
    "instruction": "instruction",
    "classification": "classification",
    "seq2seq": "sequence to sequence",
    "token_classification": "named entities",
}


def _schema_name(value: Any) -> str:
    return SCHEMA_NAMES.get(str(value), str(value).replace("_", " "))


def _stage_name(value: Any) -> str:
    """A model version's stage; "none" reads as a stage called None, so it says so."""
    text = str(getattr(value, "value", value))
    return "no stage" if text in ("none", "None", "") else text


templates.env.filters.update(
    schema_name=_schema_name,
    stage_name=_stage_name,
    filesize=_filesize,
    datetime=_datetime,
    duration=_duration,
    metric=_metric,
    pretty_json=_pretty_json,
    breakable=_breakable,
)


def _run_progress(run: Any) -> dict[str, Any]:
    from app.services.runs.service import progress

    return progress(run)


# Cards show a classifier's accuracy and F1 where a language model shows perplexity.
templates.env.globals.update(
    percent=_percent, is_classifier=model_kind.is_classifier, run_progress=_run_progress
)
