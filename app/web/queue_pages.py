"""The queue page: what waits (in order, with reorder and cancel buttons) and what runs where."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from app.services.runs import queue as run_queue
from app.services.runs import service as runs
from app.web.pages import CSRF, DbDep, PageDep, PageRoute, redirect
from app.web.rendering import render

router = APIRouter(prefix="/queue", route_class=PageRoute, include_in_schema=False)


@router.get("")
def queue_page(request: Request, session: DbDep, pc: PageDep) -> Response:
    """The whole page; htmx polls the same URL every few seconds for the `queue_body` block."""
    view = run_queue.queue_view(session=session, ctx=pc.ctx)
    return render(
        request,
        "queue.html",
        {
            "view": view,
            "priority_name": run_queue.priority_name,
            "running_for": run_queue.running_for,
        },
        block="queue_body",
    )


@router.post("/runs/{run_id}/move", dependencies=[CSRF])
def move_run(
    run_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    direction: Annotated[str, Form(max_length=8)],
) -> Response:
    run_queue.move(session=session, ctx=pc.ctx, run_id=run_id, direction=direction)
    return redirect(request, "/queue")


@router.post("/runs/{run_id}/priority", dependencies=[CSRF])
def set_priority(
    run_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    priority: Annotated[str, Form(max_length=16)],
) -> Response:
    run_queue.set_priority(session=session, ctx=pc.ctx, run_id=run_id, priority=priority)
    return redirect(request, "/queue")


@router.post("/runs/{run_id}/cancel", dependencies=[CSRF])
def cancel_run(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    runs.cancel(session=session, ctx=pc.ctx, run_id=run_id)
    return redirect(request, "/queue")
