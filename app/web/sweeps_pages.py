"""Sweep pages: the list, and one sweep's trials table, best so far and scatter plot."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from app.core import safe_json
from app.core.errors import DomainError, Forbidden
from app.db.models import Role
from app.services.datasets import service as datasets
from app.services.registry import base_models
from app.services.runs.config import RunConfig
from app.services.sweeps import service as sweeps
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, form_errors, redirect
from app.web.pages import rollback as rollback_request
from app.web.rendering import render

router = APIRouter(prefix="/sweeps", route_class=PageRoute, include_in_schema=False)

PLOT_W, PLOT_H, PAD = 720, 300, 44


def _axis_value(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def scatter(
    trials: list[dict[str, Any]], param: str, log: bool, best_run_id: int | None
) -> dict[str, Any]:
    """Points of metric vs one parameter, in SVG coordinates (drawn by the template).

    Numeric parameters go on a linear or log axis; others (a scheduler name) on evenly spaced
    categories. Trials without a score yet are left out."""
    scored = [t for t in trials if t["value"] is not None and param in t["params"]]
    raw = [t["params"][param] for t in scored]
    numeric = all(_axis_value(v) is not None for v in raw)
    categories: list[str] = []
    if numeric:
        xs = [float(v) for v in raw]
        use_log = log and all(x > 0 for x in xs)
        xs = [math.log10(x) if use_log else x for x in xs]
    else:
        categories = sorted({str(v) for v in raw})
        xs = [float(categories.index(str(v))) for v in raw]
        use_log = False
    ys = [float(t["value"]) for t in scored]

    def scale(values: list[float], size: int, flip: bool) -> list[float]:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        span = hi - lo or 1.0
        inner = size - 2 * PAD - 24  # 12 px inside each axis end: no point sits on an axis
        out = [(v - lo) / span * inner + PAD + 12 for v in values]
        return [size - v for v in out] if flip else out

    px, py = scale(xs, PLOT_W, False), scale(ys, PLOT_H, True)
    points = [
        {
            "x": round(x, 1),
            "y": round(y, 1),
            "label": f"trial {t['trial']}: {param}={t['params'][param]}, value {t['value']:.4g}",
            "best": t["run_id"] == best_run_id,
            "run_id": t["run_id"],
        }
        for x, y, t in zip(px, py, scored, strict=True)
    ]
    return {
        "points": points,
        "width": PLOT_W,
        "height": PLOT_H,
        "pad": PAD,
        "x_min": min(raw, default=""),
        "x_max": max(raw, default="") if numeric else "",
        "y_min": min(ys, default=0.0),
        "y_max": max(ys, default=0.0),
        "log": use_log,
        "categories": categories,
    }


EXAMPLE_SPACE = '{"learning_rate": {"values": [0.0003, 0.001, 0.003]}}'
EXAMPLE_CONFIG = '{"max_steps": 200, "eval_steps": 20}'


class SweepForm(BaseModel):
    """The sweep form as typed; the search space and base config are JSON text."""

    name: str = ""
    dataset_id: str = ""
    base_model: str = "scratch-tiny"
    method: str = "grid"
    metric: str = "eval_loss"
    direction: str = "minimize"
    max_trials: str = "10"
    parallelism: str = "1"
    prune: str = ""
    search_space: str = EXAMPLE_SPACE
    config: str = EXAMPLE_CONFIG


def _form_page(
    request: Request,
    session: Any,
    pc: PageContext,
    values: dict[str, Any],
    errors: dict[str, str],
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "sweeps.html",
        {
            "sweeps": sweeps.list_for_workspace(session=session, ctx=pc.ctx, limit=200),
            "datasets": datasets.list_for_workspace(session=session, ctx=pc.ctx, limit=500),
            "base_models": list(base_models.available().values()),
            "values": values,
            "errors": errors,
        },
        status_code=status_code,
    )


@router.get("")
def sweep_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    return _form_page(request, session, pc, SweepForm().model_dump() | {"prune": "on"}, {})


def _int(raw: str, field: str, errors: dict[str, str]) -> int:
    try:
        return int(raw)
    except ValueError:
        errors[field] = "enter a whole number"
        return 0


@router.post("", dependencies=[CSRF])
def create_sweep(
    request: Request, session: DbDep, pc: PageDep, form: Annotated[SweepForm, Form()]
) -> Response:
    pc.ctx.require(Role.editor)
    values = form.model_dump()
    errors: dict[str, str] = {}
    dataset_id = _int(form.dataset_id, "dataset_id", errors)
    max_trials = _int(form.max_trials, "max_trials", errors)
    parallelism = _int(form.parallelism, "parallelism", errors)
    space: Any = None
    base: Any = None
    for field, text in (("search_space", form.search_space), ("config", form.config or "{}")):
        try:
            parsed = safe_json.loads(text)
        except safe_json.JSONRefused as exc:
            errors[field] = f"the JSON {exc}"
            continue
        except ValueError as exc:
            errors[field] = f"not valid JSON: {exc}"
            continue
        if not isinstance(parsed, dict):
            errors[field] = "must be a JSON object"
        elif field == "search_space":
            space = parsed
        else:
            base = parsed
    config: RunConfig | None = None
    if base is not None:
        try:
            config = RunConfig(**base)
        except ValidationError as exc:
            errors["config"] = "; ".join(f"{k}: {v}" for k, v in form_errors(exc).items())
        except TypeError:
            errors["config"] = "keys must be hyperparameter names"
    if errors or config is None or space is None:
        return _form_page(request, session, pc, values, errors, status_code=422)
    try:
        sweep = sweeps.create_sweep(
            session=session,
            ctx=pc.ctx,
            dataset_id=dataset_id,
            base_model=form.base_model,
            name=form.name.strip() or None,
            config=config,
            search_space=space,
            method=form.method,
            metric=form.metric.strip()[:64] or "eval_loss",
            direction=form.direction,
            max_trials=max_trials,
            parallelism=parallelism,
            prune=bool(form.prune),
        )
    except Forbidden:
        raise
    except DomainError as exc:
        rollback_request(request)
        field = exc.param if exc.param in values else "form"
        return _form_page(
            request, session, pc, values, {field: exc.message}, status_code=exc.status_code
        )
    return redirect(request, f"/sweeps/{sweep.id}")


@router.get("/{sweep_id}")
def sweep_detail(
    sweep_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    param: Annotated[str | None, Query(max_length=64)] = None,
    log: Annotated[bool, Query()] = False,
) -> Response:
    sweep = sweeps.get_for_member(session=session, ctx=pc.ctx, sweep_id=sweep_id)
    summary = sweeps.summary(session=session, sweep=sweep)
    params = sorted(sweep.search_space)
    chosen = param if param in params else params[0]
    return render(
        request,
        "sweep_detail.html",
        {
            "sweep": sweep,
            "summary": summary,
            "params": params,
            "param": chosen,
            "log": log,
            "plot": scatter(summary["trials"], chosen, log, sweep.best_run_id),
        },
        block="sweep_body",
    )


@router.post("/{sweep_id}/cancel", dependencies=[CSRF])
def cancel_sweep(sweep_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    sweeps.cancel(session=session, ctx=pc.ctx, sweep_id=sweep_id)
    return redirect(request, f"/sweeps/{sweep_id}")
