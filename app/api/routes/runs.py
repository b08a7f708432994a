"""Runs: launch, list, inspect (metrics, log, checkpoints), cancel, pause and resume."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import PlainTextResponse, Response

from app.api.deps import SessionDep, Workspace
from app.api.schemas.runs import (
    CheckpointRead,
    MetricPointRead,
    RunCreate,
    RunEstimate,
    RunEstimateRequest,
    RunEventRead,
    RunPage,
    RunRead,
)
from app.db.base import MAX_ID
from app.services import estimate
from app.services.runs import access as run_access
from app.services.runs import service as runs
from app.services.runs import spec as run_spec

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


@router.get("", response_model=RunPage)
def read_runs(
    session: SessionDep,
    ctx: Workspace,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> RunPage:
    items = runs.list_for_workspace(session=session, ctx=ctx, limit=limit, offset=offset)
    return RunPage(
        items=[RunRead.model_validate(r) for r in items],
        total=runs.count_for_workspace(session=session, ctx=ctx),
    )


@router.post("", response_model=RunRead, status_code=status.HTTP_201_CREATED)
def create_run(body: RunCreate, session: SessionDep, ctx: Workspace) -> RunRead:
    run = runs.create_run(
        session=session,
        ctx=ctx,
        dataset_id=body.dataset_id,
        validation_dataset_id=body.validation_dataset_id,
        base_model=body.base_model,
        config=body.config,
        name=body.name,
        suffix=body.suffix,
        dataset_version_id=body.dataset_version_id,
        priority=body.priority,
    )
    return RunRead.model_validate(run)


@router.post("/estimate", response_model=RunEstimate)
def estimate_run(body: RunEstimateRequest, session: SessionDep, ctx: Workspace) -> RunEstimate:
    """Memory (weights, gradients, AdamW states, activations) against the device, and the
    expected duration when a run of the same shape has been measured; launches nothing."""
    result = estimate.for_launch(
        session=session,
        ctx=ctx,
        base_model=body.base_model,
        config=body.config,
        dataset_id=body.dataset_id,
        dataset_version_id=body.dataset_version_id,
        has_validation=body.validation_dataset_id is not None,
    )
    return RunEstimate(**result.as_dict())


@router.get("/{run_id}", response_model=RunRead)
def read_run(run_id: int, session: SessionDep, ctx: Workspace) -> RunRead:
    run = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    return RunRead.model_validate(run)


@router.post("/{run_id}/cancel", response_model=RunRead)
def cancel_run(run_id: int, session: SessionDep, ctx: Workspace) -> RunRead:
    return RunRead.model_validate(runs.cancel(session=session, ctx=ctx, run_id=run_id))


@router.post("/{run_id}/stop", response_model=RunRead)
def stop_run(run_id: int, session: SessionDep, ctx: Workspace) -> RunRead:
    """Stop and keep: end early, save the model, finish as succeeded (unlike cancel)."""
    return RunRead.model_validate(runs.stop_and_keep(session=session, ctx=ctx, run_id=run_id))


@router.post("/{run_id}/pause", response_model=RunRead)
def pause_run(run_id: int, session: SessionDep, ctx: Workspace) -> RunRead:
    """Pause a queued or running run to resume it later: the worker stops at the end of its
    step with a checkpoint, and the run ends `cancelled` with `paused: true` (a queued one at
    once). Pausing a paused run changes nothing; a finished or cancelling one is a 409."""
    return RunRead.model_validate(runs.pause(session=session, ctx=ctx, run_id=run_id))


@router.post("/{run_id}/resume", response_model=RunRead)
def resume_run(run_id: int, session: SessionDep, ctx: Workspace) -> RunRead:
    """Queue an interrupted or failed run again, from its last checkpoint."""
    return RunRead.model_validate(runs.resume(session=session, ctx=ctx, run_id=run_id))


@router.get(
    "/{run_id}/config",
    response_class=Response,
    responses={
        200: {
            "content": {"application/yaml": {}, "application/json": {}},
            "description": "The run's definition, to edit and launch again.",
        }
    },
)
def read_config(
    run_id: int,
    session: SessionDep,
    ctx: Workspace,
    format: Annotated[str, Query(pattern="^(json|yaml)$")] = "yaml",  # noqa: A002
) -> PlainTextResponse:
    """The run's launch config as a file; POST it back (JSON) or edit and clone it."""
    run = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    media = "application/json" if format == "json" else "application/yaml"
    return PlainTextResponse(
        run_spec.dump(run_spec.spec_of(run), format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="run-{run.id}.{format}"'},
    )


@router.post("/{run_id}/clone", response_model=RunRead, status_code=status.HTTP_201_CREATED)
def clone_run(
    run_id: int,
    session: SessionDep,
    ctx: Workspace,
    overrides: Annotated[dict[str, Any] | None, Body()] = None,
) -> RunRead:
    """Launch a new run with this run's config; `overrides` (same fields as a launch, config
    merged key by key) change what differs."""
    run = run_spec.clone(session=session, ctx=ctx, run_id=run_id, overrides=overrides or {})
    return RunRead.model_validate(run)


@router.get("/{run_id}/metrics", response_model=list[MetricPointRead])
def read_metrics(
    run_id: int,
    session: SessionDep,
    ctx: Workspace,
    after_step: Annotated[int, Query(ge=-1, le=MAX_ID)] = -1,
    limit: Annotated[int, Query(ge=1, le=50_000)] = 1_000,
) -> list[dict[str, Any]]:
    """Every point after `after_step`, grouped by step (what a reconnecting chart asks for).

    At most `limit` steps, always whole: ask again with `after_step` = the last step returned
    until fewer than `limit` steps come back.
    """
    run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    rows = runs.metric_page(session=session, run_id=run_id, after_step=after_step, steps=limit)
    # Plain dicts: FastAPI validates them once against the response model.
    return [{"step": p.pop("step"), "values": p} for p in runs.group_by_step(rows)]


@router.get("/{run_id}/events", response_model=list[RunEventRead])
def read_events(
    run_id: int,
    session: SessionDep,
    ctx: Workspace,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[RunEventRead]:
    run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    return [
        RunEventRead.model_validate(e)
        for e in runs.events(session=session, run_id=run_id, after_id=after_id, limit=limit)
    ]


@router.get("/{run_id}/checkpoints", response_model=list[CheckpointRead])
def read_checkpoints(run_id: int, session: SessionDep, ctx: Workspace) -> list[CheckpointRead]:
    run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    return [
        CheckpointRead.model_validate(c) for c in runs.checkpoints(session=session, run_id=run_id)
    ]
