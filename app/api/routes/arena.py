"""The arena's votes (blind side-by-side preferences) and the workspace leaderboard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from app.api.deps import SessionDep, Workspace
from app.api.schemas.datasets import DatasetRead
from app.api.schemas.evaluation import ArenaVoteCreate, ArenaVoteRead
from app.db.base import MAX_ID
from app.services.evaluation import arena, arena_preferences

router = APIRouter(prefix="/api/v1/arena", tags=["evaluation"])


@router.post("/votes", response_model=ArenaVoteRead, status_code=status.HTTP_201_CREATED)
def create_vote(body: ArenaVoteCreate, session: SessionDep, ctx: Workspace) -> ArenaVoteRead:
    """Record a vote between two of the workspace's models (for clients with their own blind
    interface; the playground's arena votes through its page)."""
    vote = arena.record_vote(
        session=session,
        ctx=ctx,
        messages=body.messages,
        model_a=body.model_a,
        model_b=body.model_b,
        answer_a=body.answer_a,
        answer_b=body.answer_b,
        winner=body.winner,
    )
    return ArenaVoteRead.model_validate(vote)


@router.post("/votes/dataset", response_model=DatasetRead, status_code=status.HTTP_201_CREATED)
def create_votes_dataset(
    session: SessionDep, ctx: Workspace, name: Annotated[str | None, Query(max_length=255)] = None
) -> DatasetRead:
    """The workspace's decisive votes as a preference dataset (winner chosen, loser rejected),
    ready for a DPO run; the same votes again answer the dataset they already made."""
    dataset = arena_preferences.votes_as_dataset(session=session, ctx=ctx, name=name)
    return DatasetRead.model_validate(dataset)


@router.get("/votes", response_model=list[ArenaVoteRead])
def read_votes(
    session: SessionDep,
    ctx: Workspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[ArenaVoteRead]:
    """The workspace's votes in id order; page on with `after_id` (the last id seen)."""
    votes = arena.list_votes(session=session, ctx=ctx, limit=limit, after_id=after_id)
    return [ArenaVoteRead.model_validate(v) for v in votes]


@router.get("/leaderboard")
def read_leaderboard(session: SessionDep, ctx: Workspace) -> dict[str, Any]:
    """Bradley–Terry ratings (Elo scale) with 95% bootstrap intervals, from every vote."""
    return arena.leaderboard(session=session, ctx=ctx)
