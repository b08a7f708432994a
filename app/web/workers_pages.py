"""The workers page: the fleet, its queues and GPUs, and which of our runs each is running."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.services import fleet
from app.web.pages import DbDep, PageDep, PageRoute
from app.web.rendering import render

router = APIRouter(prefix="/workers", route_class=PageRoute, include_in_schema=False)


@router.get("")
def workers_page(request: Request, session: DbDep, pc: PageDep) -> Response:
    return render(request, "workers.html", {"fleet": fleet.fleet(session=session, ctx=pc.ctx)})
