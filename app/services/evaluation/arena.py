"""The arena: blind side-by-side votes between two chat models of a workspace, and the
workspace's leaderboard (Bradley–Terry strengths on the Elo scale with bootstrap confidence
intervals).

A vote keeps the conversation, both answers, both versions and the winner, so it is also a
preference pair (the winner's answer chosen, the other rejected) for DPO data.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from collections.abc import Sequence
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound, ValidationFailed
from app.core.settings import get_settings
from app.db.models import ArenaVote, Deployment, DeploymentStatus, Role
from app.services.registry import kind as model_kind
from app.services.registry import versions as registry
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext

WINNERS = ("a", "b", "tie", "both_bad")
# Elo scale: a 400-point gap is 10:1 odds; 1000 is the average model.
ELO_SCALE, ELO_BASE = 400.0, 1000.0
BOOTSTRAP_ROUNDS = 200
BATTLE_MAX_AGE_S = 24 * 3600
MAX_LEADERBOARD_VOTES = 50_000


# --- battles: a blind pair of models ---------------------------------------------------------
def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().resolved_secret_key(), salt="arena-battle")


def chat_models(*, session: Session, ctx: WorkspaceContext) -> list[str]:
    """The names a battle can draw: live deployments' names, then versions' serving names
    (classifiers left out: they do not chat)."""
    versions = registry.list_versions(session=session, ctx=ctx)
    chat = {v.id: v for v in versions if not model_kind.is_classifier(v)}
    live = session.scalars(
        select(Deployment).where(
            Deployment.workspace_id == ctx.workspace.id,
            Deployment.status != DeploymentStatus.stopped,
        )
    ).all()
    names = [d.name for d in live if d.name and d.model_version_id in chat]
    taken = {d.model_version_id for d in live if d.name and d.model_version_id in chat}
    names += [v.serving_name for v in chat.values() if v.id not in taken]
    return list(dict.fromkeys(names))


def start_battle(
    *, session: Session, ctx: WorkspaceContext, pool: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> str:  # fmt: skip
    """Two different models of the workspace in a random order, sealed in a signed token: the
    browser shows "A" and "B" and learns the names only after the vote."""
    ctx.require(Role.editor)
    names = chat_models(session=session, ctx=ctx)
    if pool:
        unknown = [p for p in pool if p not in names]
        if unknown:
            raise ValidationFailed(
                f"{unknown[0]!r} is not a chat model of this workspace", param="models"
            )
        names = list(dict.fromkeys(pool))
    if len(names) < 2:
        raise ValidationFailed(
            "a battle needs two chat models: register (or deploy) at least two", param="models"
        )
    pair = sorted((rng or random.SystemRandom()).sample(names, 2))
    # The token is signed, not encrypted: it names the pair in sorted order, and which of the
    # two is "A" follows from a keyed hash of its nonce, so nobody without the server's key
    # can tell the sides apart before voting.
    nonce = secrets.token_hex(8)
    return _serializer().dumps({"w": ctx.workspace.id, "m": pair, "n": nonce})


def _swap(nonce: str) -> int:
    key = get_settings().resolved_secret_key().encode()
    return hmac.new(key, f"arena-side:{nonce}".encode(), hashlib.sha256).digest()[0] & 1


def open_battle(*, ctx: WorkspaceContext, token: str) -> tuple[str, str]:
    """The (a, b) model names of a battle token of this workspace."""
    refused = ValidationFailed("unknown or expired battle; start a new one", param="battle")
    try:
        data = _serializer().loads(token, max_age=BATTLE_MAX_AGE_S)
    except BadSignature as exc:
        raise refused from exc
    if not isinstance(data, dict) or data.get("w") != ctx.workspace.id:
        raise refused
    pair, swap = [str(m) for m in data["m"]], _swap(str(data["n"]))
    return pair[swap], pair[1 - swap]


# --- votes -----------------------------------------------------------------------------------
def _version_id(session: Session, ctx: WorkspaceContext, name: str) -> int | None:
    """The version a name routes to now (a deployment's live version, or a serving name)."""
    for deployment in session.scalars(
        select(Deployment).where(
            Deployment.workspace_id == ctx.workspace.id,
            Deployment.status != DeploymentStatus.stopped,
            Deployment.name == name,
        )
    ):
        return deployment.model_version_id
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    return version.id if version else None


def version_id_for(*, session: Session, ctx: WorkspaceContext, name: str) -> int:
    """The version a model name of this workspace routes to; 404 naming it otherwise."""
    found = _version_id(session, ctx, name)
    if found is None:
        raise NotFound(f"the model {name!r} does not exist in this workspace", param="model")
    return found


def _check_messages(messages: list[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        if message.get("role") not in ("system", "user", "assistant") or not isinstance(
            message.get("content"), str
        ):
            raise ValidationFailed(
                f"messages[{i}] must be {{role: system|user|assistant, content: text}}",
                param="messages",
            )
    if messages[-1]["role"] != "user":
        raise ValidationFailed("the last message is the user's prompt", param="messages")


def record_vote(
    *,
    session: Session,
    ctx: WorkspaceContext,
    messages: list[dict[str, Any]],
    model_a: str,
    model_b: str,
    answer_a: str,
    answer_b: str,
    winner: str,
) -> ArenaVote:
    """Store one vote (both models must be this workspace's; an unknown name is a 404)."""
    ctx.require(Role.editor)
    if winner not in WINNERS:
        raise ValidationFailed(f"winner must be one of {', '.join(WINNERS)}", param="winner")
    if model_a == model_b:
        raise ValidationFailed("a vote compares two different models", param="model_b")
    if not messages:
        raise ValidationFailed("messages: the prompt is missing", param="messages")
    _check_messages(messages)
    ids = {}
    for param, name in (("model_a", model_a), ("model_b", model_b)):
        found = _version_id(session, ctx, name)
        if found is None:
            raise NotFound(f"the model {name!r} does not exist in this workspace", param=param)
        ids[param] = found
    vote = ArenaVote(
        workspace_id=ctx.workspace.id,
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        answer_a=answer_a,
        answer_b=answer_b,
        version_a_id=ids["model_a"],
        version_b_id=ids["model_b"],
        model_a=model_a,
        model_b=model_b,
        winner=winner,
        created_by_id=ctx.user.id,
    )
    session.add(vote)
    session.flush()
    audit.record(
        session=session,
        actor=ctx.user,
        action="arena.vote",
        target_type="arena_vote",
        target_id=vote.id,
        detail={"model_a": model_a, "model_b": model_b, "winner": winner},
        workspace_id=ctx.workspace.id,
    )
    return vote


def list_votes(
    *,
    session: Session,
    ctx: WorkspaceContext,
    limit: int = 100,
    after_id: int = 0,
    newest: bool = False,
) -> list[ArenaVote]:
    """The workspace's votes in id order, `after_id` to page on (what DPO data reads); with
    `newest`, the newest `limit` votes instead."""
    query = select(ArenaVote).where(
        ArenaVote.workspace_id == ctx.workspace.id, ArenaVote.id > after_id
    )
    order = ArenaVote.id.desc() if newest else ArenaVote.id
    return list(session.scalars(query.order_by(order).limit(limit)))


def judge_items(
    *, session: Session, workspace_id: int, vote_ids: list[int]
) -> list[dict[str, Any]]:
    """The votes a judge evaluation reads (worker side): question, both answers, the winner."""
    votes = session.scalars(
        select(ArenaVote)
        .where(ArenaVote.workspace_id == workspace_id, ArenaVote.id.in_(vote_ids))
        .order_by(ArenaVote.id)
    )
    return [
        {
            "vote_id": v.id,
            "question": "\n".join(m["content"] for m in v.messages if m["role"] == "user"),
            "answer_a": v.answer_a,
            "answer_b": v.answer_b,
            "model_a": v.model_a,
            "model_b": v.model_b,
            "human": "tie" if v.winner in ("tie", "both_bad") else v.winner,
        }
        for v in votes
    ]


# --- the leaderboard -------------------------------------------------------------------------
def bradley_terry(
    battles: Sequence[tuple[str, str, float]], models: Sequence[str], iterations: int = 200
) -> dict[str, float]:
    """Bradley–Terry strengths from (a, b, score of a) battles — score 1 a won, 0 b won, 0.5 a
    tie — by the MM algorithm (Hunter 2004), on the Elo scale (mean 1000).

    Each model also plays one virtual tie against an average opponent: a prior that keeps a
    model with only wins (or only losses) finite instead of infinitely strong.
    """
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = [0.5] * n  # the virtual tie's half win
    pairs: dict[tuple[int, int], float] = {}
    for a, b, score in battles:
        i, j = index[a], index[b]
        wins[i] += score
        wins[j] += 1.0 - score
        key = (min(i, j), max(i, j))
        pairs[key] = pairs.get(key, 0.0) + 1.0
    strength = [1.0] * n
    for _ in range(iterations):
        new = []
        for i in range(n):
            denominator = 1.0 / (strength[i] + 1.0)  # the virtual game against strength 1
            for (x, y), games in pairs.items():
                if i in (x, y):
                    other = y if i == x else x
                    denominator += games / (strength[i] + strength[other])
            new.append(wins[i] / denominator)
        mean_log = sum(math.log(s) for s in new) / n
        strength = [s / math.exp(mean_log) for s in new]
    return {m: ELO_BASE + ELO_SCALE * math.log10(strength[index[m]]) for m in models}


def _score(winner: str) -> float:
    return {"a": 1.0, "b": 0.0}.get(winner, 0.5)  # tie and both_bad: a draw


def leaderboard(
    *, session: Session, ctx: WorkspaceContext, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict[str, Any]:
    """Every model that has votes: its rating, a 95% bootstrap interval (the votes resampled
    with replacement `rounds` times, seeded, so the page does not flicker), votes, wins, ties
    and losses. Ranked by rating."""
    rows = session.execute(
        select(ArenaVote.model_a, ArenaVote.model_b, ArenaVote.winner)
        .where(ArenaVote.workspace_id == ctx.workspace.id)
        .order_by(ArenaVote.id.desc())
        .limit(MAX_LEADERBOARD_VOTES)
    ).all()
    battles = [(a, b, _score(w)) for a, b, w in rows]
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if not battles:
        return {"votes": 0, "models": [], "rounds": 0}
    rating = bradley_terry(battles, models)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(rounds):
        resampled = [battles[rng.randrange(len(battles))] for _ in battles]
        present = sorted({m for a, b, _ in resampled for m in (a, b)})
        for model, value in bradley_terry(resampled, present, iterations=100).items():
            samples[model].append(value)
    table: list[dict[str, Any]] = []
    for model in models:
        values = sorted(samples[model])
        low = values[int(0.025 * (len(values) - 1))] if values else None
        high = values[int(math.ceil(0.975 * (len(values) - 1)))] if values else None
        won = sum(1 for a, b, s in battles if (a == model and s == 1) or (b == model and s == 0))
        lost = sum(1 for a, b, s in battles if (a == model and s == 0) or (b == model and s == 1))
        played = sum(1 for a, b, _ in battles if model in (a, b))
        table.append(
            {
                "model": model,
                "rating": rating[model],
                "ci_low": low,
                "ci_high": high,
                "votes": played,
                "wins": won,
                "losses": lost,
                "ties": played - won - lost,
            }
        )
    table.sort(key=lambda r: -float(r["rating"]))
    for rank, row in enumerate(table, start=1):
        row["rank"] = rank
    return {"votes": len(battles), "models": table, "rounds": rounds}
