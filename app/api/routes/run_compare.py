"""Comparing runs (config differences, final metrics, downsampled curves) and one run's
metrics as a streamed CSV or JSON download."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.services.runs import access as run_access
from app.services.runs import compare as run_compare
from app.services.runs import service as runs

router = APIRouter(tags=["compare"])

RunIds = Annotated[
    list[int],
    Query(
        description=f"Runs to compare, repeated: ?run_ids=1&run_ids=2 (at most "
        f"{run_compare.MAX_RUNS})"
    ),
]


# --- shapes -------------------------------------------------------------------------------
class CompareRun(BaseModel):
    id: int
    name: str
    status: str
    step: int
    total_steps: int | None
    final_metrics: dict[str, float | None]


class ConfigDifferenceRead(BaseModel):
    key: str
    values: list[Any]
    missing: list[int]  # ids of the runs that have no such key (their value shows as null)


class CompareRead(BaseModel):
    runs: list[CompareRun]
    metrics: list[str]
    config_diff: list[ConfigDifferenceRead]


class SeriesRead(BaseModel):
    run_id: int
    total: int
    points: list[tuple[int, float, float | None]]  # (step, seconds since start, value)


class SeriesPage(BaseModel):
    metric: str
    max_points: int
    series: list[SeriesRead]


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


# --- routes -------------------------------------------------------------------------------
@router.get("/api/v1/compare", response_model=CompareRead)
def read_comparison(run_ids: RunIds, session: SessionDep, ctx: Workspace) -> CompareRead:
    """The runs side by side: exactly the settings that differ, and each metric's last value."""
    chosen = run_compare.runs_for_compare(session=session, ctx=ctx, run_ids=run_ids)
    diffs = run_compare.config_diff([run_compare.comparable_settings(r) for r in chosen])
    return CompareRead(
        runs=[
            CompareRun(
                id=r.id,
                name=r.name,
                status=r.status,
                step=r.step,
                total_steps=r.total_steps,
                final_metrics={
                    name: run_compare.finite(value)
                    for name, value in runs.latest_metrics(session=session, run_id=r.id).items()
                },
            )
            for r in chosen
        ],
        metrics=run_compare.metric_names(session=session, run_ids=[r.id for r in chosen]),
        config_diff=[
            ConfigDifferenceRead(
                key=d.key,
                values=[None if v is run_compare.MISSING else v for v in d.values],
                missing=[
                    r.id for r, v in zip(chosen, d.values, strict=True) if v is run_compare.MISSING
                ],
            )
            for d in diffs
        ],
    )


@router.get("/api/v1/compare/series", response_model=SeriesPage)
def read_comparison_series(
    run_ids: RunIds,
    session: SessionDep,
    ctx: Workspace,
    metric: Annotated[str, Query(min_length=1, max_length=64)] = "train_loss",
    points: Annotated[
        int, Query(ge=8, le=run_compare.MAX_POINTS, description="most points per series")
    ] = run_compare.DEFAULT_POINTS,
) -> SeriesPage:
    """Each run's curve of one metric, at most `points` points each whatever the run's length
    (first, last, lowest and highest point of each step range kept)."""
    chosen = run_compare.runs_for_compare(session=session, ctx=ctx, run_ids=run_ids)
    return SeriesPage(
        metric=metric,
        max_points=points,
        series=[
            SeriesRead.model_validate(
                run_compare.series(session=session, run=r, metric=metric, max_points=points),
                from_attributes=True,
            )
            for r in chosen
        ],
    )


@router.get(
    "/api/v1/runs/{run_id}/metrics/download",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {}, "application/json": {}},
            "description": "Every metric point of the run, oldest first, streamed.",
        }
    },
)
def download_metrics(
    run_id: int,
    session: SessionDep,
    ctx: Workspace,
    format: Annotated[ExportFormat, Query()] = ExportFormat.csv,
) -> StreamingResponse:
    """Every metric point of the run, streamed (a million-point run never sits in memory)."""
    run = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    filename = f"run-{run.id}-metrics.{format.value}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format is ExportFormat.csv:
        body = run_compare.export_csv(run_id=run.id)
        media_type = "text/csv; charset=utf-8"
    else:
        body = run_compare.export_json(head=run_compare.export_head(run))
        media_type = "application/json"
    return StreamingResponse(body, media_type=media_type, headers=headers)
