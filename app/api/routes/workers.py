"""The worker fleet: which workers are up, their queues, GPUs and what each runs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from app.api.deps import SessionDep, Workspace
from app.services import fleet

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.get("")
def read_workers(session: SessionDep, ctx: Workspace) -> dict[str, Any]:
    """From `celery inspect` over the broker (1.5 s timeout); `available` is false with a
    reason where the broker cannot be asked (the embedded one cannot broadcast)."""
    return asdict(fleet.fleet(session=session, ctx=ctx))
