"""Hyperparameter sweeps: create, list, inspect (trials, best so far), cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import SessionDep, Workspace
from app.api.schemas.sweeps import SweepCreate, SweepDetail, SweepPage, SweepRead
from app.db.base import MAX_ID
from app.db.models import Sweep
from app.services.sweeps import service as sweeps

router = APIRouter(prefix="/api/v1/sweeps", tags=["sweeps"])


def _detail(session: SessionDep, sweep: Sweep) -> SweepDetail:
    summary = sweeps.summary(session=session, sweep=sweep)
    return SweepDetail(
        **SweepRead.model_validate(sweep).model_dump(),
        trials=summary["trials"],
        best=summary["best"],
        budget=summary["budget"],
    )


@router.get("", response_model=SweepPage)
def read_sweeps(
    session: SessionDep,
    ctx: Workspace,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> SweepPage:
    items = sweeps.list_for_workspace(session=session, ctx=ctx, limit=limit, offset=offset)
    return SweepPage(items=[SweepRead.model_validate(s) for s in items])


@router.post("", response_model=SweepDetail, status_code=status.HTTP_201_CREATED)
def create_sweep(body: SweepCreate, session: SessionDep, ctx: Workspace) -> SweepDetail:
    sweep = sweeps.create_sweep(
        session=session,
        ctx=ctx,
        dataset_id=body.dataset_id,
        base_model=body.base_model,
        name=body.name,
        config=body.config,
        search_space=body.search_space,
        method=body.method,
        metric=body.metric,
        direction=body.direction,
        max_trials=body.max_trials,
        parallelism=body.parallelism,
        prune=body.prune,
        seed=body.seed,
    )
    return _detail(session, sweep)


@router.get("/{sweep_id}", response_model=SweepDetail)
def read_sweep(sweep_id: int, session: SessionDep, ctx: Workspace) -> SweepDetail:
    return _detail(session, sweeps.get_for_member(session=session, ctx=ctx, sweep_id=sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepDetail)
def cancel_sweep(sweep_id: int, session: SessionDep, ctx: Workspace) -> SweepDetail:
    return _detail(session, sweeps.cancel(session=session, ctx=ctx, sweep_id=sweep_id))
