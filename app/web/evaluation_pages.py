"""Evaluation pages: k-fold cross-validations (list, launch, per fold and mean ± std, register
a fold or a final fit) and the arena (blind battles, votes, leaderboard)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from app.core import safe_json
from app.core.errors import DomainError, Forbidden
from app.db.models import Role
from app.services.datasets import service as datasets
from app.services.evaluation import arena, arena_preferences, cross_validation
from app.services.registry import base_models
from app.services.registry import evaluations as model_evaluations
from app.services.runs.config import RunConfig
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, form_errors, redirect
from app.web.pages import rollback as rollback_request
from app.web.playground_pages import ChatMessage, PlaygroundRequest, stream_answer
from app.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

DEFAULT_CONFIG = '{"max_steps": 50}'


def _cv_list(
    request: Request,
    session: Any,
    pc: PageContext,
    values: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    rows = cross_validation.list_for_workspace(session=session, ctx=pc.ctx)
    return render(
        request,
        "cross_validations.html",
        {
            "items": [cross_validation.summary(session=session, cv=cv) for cv in rows],
            "datasets": datasets.list_for_workspace(session=session, ctx=pc.ctx, limit=500),
            "base_models": list(base_models.available().values()),
            "values": values,
            "error": error,
        },
        status_code=status_code,
    )


@router.get("/cross-validations")
def cross_validation_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    values = {"k": "5", "seed": "0", "config": DEFAULT_CONFIG, "stratify": "auto"}
    return _cv_list(request, session, pc, values)


@router.post("/cross-validations", dependencies=[CSRF])
def create_cross_validation(
    request: Request,
    session: DbDep,
    pc: PageDep,
    dataset_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    base_model: Annotated[str, Form(max_length=255)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    k: Annotated[int, Form(ge=2, le=10)] = 5,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    stratify: Annotated[str, Form(pattern="^(auto|yes|no)$")] = "auto",
    config: Annotated[str, Form(max_length=5000)] = DEFAULT_CONFIG,
) -> Response:
    values = {
        "dataset_id": str(dataset_id), "base_model": base_model, "name": name, "k": str(k),
        "seed": str(seed), "stratify": stratify, "config": config,
    }  # fmt: skip
    try:
        parsed = safe_json.loads(config or "{}")
        if not isinstance(parsed, dict):
            raise ValueError("the run config must be a JSON object")
        run_config = RunConfig(**parsed)
    except ValidationError as exc:
        message = "; ".join(f"{k}: {v}" for k, v in form_errors(exc).items())
        return _cv_list(request, session, pc, values, f"run config: {message}", 422)
    except (ValueError, TypeError) as exc:
        return _cv_list(request, session, pc, values, f"run config: {exc}", 422)
    try:
        cv = cross_validation.create(
            session=session,
            ctx=pc.ctx,
            dataset_id=dataset_id,
            config=run_config,
            base_model=base_model or None,
            k=k,
            stratify=None if stratify == "auto" else stratify == "yes",
            seed=seed,
            name=name or None,
        )
    except Forbidden:
        raise
    except DomainError as exc:
        rollback_request(request)
        return _cv_list(request, session, pc, values, exc.message, exc.status_code)
    return redirect(request, f"/cross-validations/{cv.id}")


def _cv_page(
    request: Request, session: Any, pc: PageContext, cv_id: int, error: str | None = None,
    status_code: int = 200,
) -> Response:  # fmt: skip
    cv = cross_validation.get(session=session, ctx=pc.ctx, cv_id=cv_id)
    summary = cross_validation.summary(session=session, cv=cv)
    return render(
        request,
        "cross_validation_detail.html",
        {"cv": summary, "error": error, "polling": summary["status"] == "running"},
        status_code=status_code,
        block="cv_body",
    )


@router.get("/cross-validations/{cv_id}")
def cross_validation_detail(cv_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    return _cv_page(request, session, pc, cv_id)


@router.post("/cross-validations/{cv_id}/register", dependencies=[CSRF])
def register_fold(
    cv_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    fold: Annotated[int, Form(ge=1, le=10)],
) -> Response:
    try:
        version = cross_validation.register_fold(
            session=session, ctx=pc.ctx, cv_id=cv_id, fold=fold
        )
    except DomainError as exc:
        if exc.status_code in (403, 404):
            raise
        rollback_request(request)
        return _cv_page(request, session, pc, cv_id, exc.message, exc.status_code)
    return redirect(request, f"/models/versions/{version.id}")


@router.post("/cross-validations/{cv_id}/final-fit", dependencies=[CSRF])
def final_fit(cv_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    try:
        run = cross_validation.launch_final_fit(session=session, ctx=pc.ctx, cv_id=cv_id)
    except DomainError as exc:
        if exc.status_code in (403, 404):
            raise
        rollback_request(request)
        return _cv_page(request, session, pc, cv_id, exc.message, exc.status_code)
    return redirect(request, f"/runs/{run.id}")


# --- the arena -------------------------------------------------------------------------------
class BattleRequest(BaseModel):
    models: list[str] | None = Field(default=None, max_length=50)


class ArenaStreamRequest(BaseModel):
    battle: str = Field(min_length=1, max_length=2000)
    side: Literal["a", "b"]
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=4096)


class ArenaVoteForm(BaseModel):
    battle: str = Field(min_length=1, max_length=2000)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    answer_a: str = Field(max_length=20_000)
    answer_b: str = Field(max_length=20_000)
    winner: Literal["a", "b", "tie", "both_bad"]


@router.get("/arena")
def arena_page(request: Request, session: DbDep, pc: PageDep) -> Response:
    """Blind battles between two of the workspace's chat models, and the leaderboard."""
    return render(
        request,
        "arena.html",
        {
            "models": arena.chat_models(session=session, ctx=pc.ctx),
            "board": arena.leaderboard(session=session, ctx=pc.ctx),
        },
    )


@router.post("/arena/battle", dependencies=[CSRF])
def start_battle(body: BattleRequest, session: DbDep, pc: PageDep) -> dict[str, str]:
    """A sealed random pair: the browser gets a token, not the names."""
    return {"battle": arena.start_battle(session=session, ctx=pc.ctx, pool=body.models)}


@router.post("/arena/stream", dependencies=[CSRF])
async def stream_side(
    body: ArenaStreamRequest, request: Request, session: DbDep, pc: PageDep
) -> Response:
    """One side's answer, streamed as the playground streams (the name stays sealed)."""
    pc.ctx.require(Role.editor)  # battles are an editor's: voting writes the workspace's data
    a, b = arena.open_battle(ctx=pc.ctx, token=body.battle)
    ask = PlaygroundRequest(
        model=a if body.side == "a" else b,
        messages=body.messages,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
    )
    return await stream_answer(session, pc, ask)


@router.post("/arena/vote", dependencies=[CSRF])
def vote(body: ArenaVoteForm, session: DbDep, pc: PageDep) -> dict[str, Any]:
    """Record the vote and reveal who was who."""
    pc.ctx.require(Role.editor)
    a, b = arena.open_battle(ctx=pc.ctx, token=body.battle)
    recorded = arena.record_vote(
        session=session,
        ctx=pc.ctx,
        messages=[m.model_dump() for m in body.messages],
        model_a=a,
        model_b=b,
        answer_a=body.answer_a,
        answer_b=body.answer_b,
        winner=body.winner,
    )
    return {"vote_id": recorded.id, "model_a": a, "model_b": b, "winner": body.winner}


@router.post("/arena/preference-dataset", dependencies=[CSRF])
def votes_dataset(request: Request, session: DbDep, pc: PageDep) -> Response:
    """The workspace's decisive votes as a preference dataset (docs/preference.md), opened."""
    dataset = arena_preferences.votes_as_dataset(session=session, ctx=pc.ctx)
    return redirect(request, f"/datasets/{dataset.id}")


@router.post("/arena/judge", dependencies=[CSRF])
def judge_votes(
    request: Request,
    session: DbDep,
    pc: PageDep,
    model: Annotated[str, Form(min_length=1, max_length=255)],
    mode: Annotated[str, Form(pattern="^(pairwise|rubric)$")] = "pairwise",
    rubric: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """The arena's judge form: the chosen model judges the votes; its version page shows it."""
    version_id = arena.version_id_for(session=session, ctx=pc.ctx, name=model)
    model_evaluations.create_judge_evaluation(
        session=session,
        ctx=pc.ctx,
        version_id=version_id,
        mode=mode,
        rubric=(rubric.strip() or None) if mode == "rubric" else None,
    )
    return redirect(request, f"/models/versions/{version_id}")
