"""Sweep pages: the list, and one sweep's trials table, best so far and scatter plot."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.services import sweeps
from app.web.pages import CSRF, DbDep, PageDep, PageRoute, redirect
from app.web.rendering import render

router = APIRouter(prefix="/sweeps", route_class=PageRoute, include_in_schema=False)

PLOT_W, PLOT_H, PAD = 560, 260, 44


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
        out = [(v - lo) / span * (size - 2 * PAD) + PAD for v in values]
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


@router.get("")
def sweep_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    items = sweeps.list_for_workspace(session=session, ctx=pc.ctx, limit=200)
    return render(request, "sweeps.html", {"sweeps": items})


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
