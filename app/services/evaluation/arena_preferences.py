"""The arena's votes as a preference dataset: every decisive vote is a pair (the winner's
answer chosen, the other rejected) after the conversation both models answered.

Ties and "both bad" votes say nothing about which answer is better and are left out. The
rows go through the ordinary upload path (datasets.ingest), so they are checked, counted and
stored like any uploaded preference file, as a new dataset ready for a DPO run.
"""

from __future__ import annotations

import io
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.db.models import ArenaVote, Dataset, Role
from app.services.datasets import intake as dataset_intake
from app.services.datasets.ingest import IngestOptions
from app.services.workspaces.access import WorkspaceContext

DECISIVE = ("a", "b")


def votes_as_dataset(
    *, session: Session, ctx: WorkspaceContext, name: str | None = None
) -> Dataset:
    """A new preference dataset from the workspace's decisive votes (oldest first)."""
    ctx.require(Role.editor)
    votes = session.scalars(
        select(ArenaVote)
        .where(ArenaVote.workspace_id == ctx.workspace.id, ArenaVote.winner.in_(DECISIVE))
        .order_by(ArenaVote.id)
    ).all()
    lines = []
    for vote in votes:
        chosen, rejected = (
            (vote.answer_a, vote.answer_b) if vote.winner == "a" else (vote.answer_b, vote.answer_a)
        )
        if chosen == rejected:
            continue  # two models said the same thing: nothing to prefer
        lines.append(
            json.dumps(
                {
                    "prompt": vote.messages,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                },
                ensure_ascii=False,
            )
        )
    if not lines:
        raise ValidationFailed(
            "the arena has no votes with a winner yet (ties and 'both bad' make no pair)"
        )
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    return dataset_intake.create_from_upload(
        session=session,
        ctx=ctx,
        stream=io.BytesIO(payload),
        filename=f"arena-votes-{len(lines)}.jsonl",
        name=name or f"arena votes ({len(lines)} pairs)",
        # Votes whose answers break a rule (an empty answer) are skipped, not fatal.
        options=IngestOptions(schema="preference", on_error="keep_valid"),
        reuse_duplicate=True,
    )
