"""The workspace's registered models and versions: lists, counts and lookups (by serving name,
by run, by checkpoint) for the pages and the API, and a version's tags."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.core.errors import ValidationFailed
from app.db.models import ModelVersion, RegisteredModel
from app.services.registry import access as registry_access
from app.services.workspaces.access import WorkspaceContext

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=/-]{0,39}$")
MAX_TAGS = 20


def list_models(
    *, session: Session, ctx: WorkspaceContext, with_versions: bool = False
) -> list[RegisteredModel]:
    query = select(RegisteredModel).where(RegisteredModel.workspace_id == ctx.workspace.id)
    if with_versions:  # all models' versions in one more query, not one per model
        query = query.options(selectinload(RegisteredModel.versions))
    return list(session.scalars(query.order_by(RegisteredModel.id.desc())))


def list_versions(*, session: Session, ctx: WorkspaceContext) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.workspace_id == ctx.workspace.id)
            .order_by(ModelVersion.id.desc())
        )
    )


def newest_versions(
    *, session: Session, ctx: WorkspaceContext, per_model: int | None, model_id: int | None = None
) -> dict[int, list[ModelVersion]]:
    """Each registered model's newest `per_model` versions (all if None), newest first.

    One query for every model of the page, instead of loading each model's versions in turn.
    """
    rank = (
        func.row_number()
        .over(partition_by=ModelVersion.registered_model_id, order_by=ModelVersion.version.desc())
        .label("rank")
    )
    ranked = select(ModelVersion.id, rank).where(ModelVersion.workspace_id == ctx.workspace.id)
    if model_id is not None:
        ranked = ranked.where(ModelVersion.registered_model_id == model_id)
    ranked_sq = ranked.subquery()
    query = select(ModelVersion).join(ranked_sq, ranked_sq.c.id == ModelVersion.id)
    if per_model is not None:
        query = query.where(ranked_sq.c.rank <= per_model)
    by_model: dict[int, list[ModelVersion]] = {}
    for version in session.scalars(
        query.order_by(ModelVersion.registered_model_id, ModelVersion.version.desc())
    ):
        by_model.setdefault(version.registered_model_id, []).append(version)
    return by_model


def version_counts(*, session: Session, ctx: WorkspaceContext) -> dict[int, int]:
    """How many versions each registered model of the workspace has."""
    rows = session.execute(
        select(ModelVersion.registered_model_id, func.count())
        .where(ModelVersion.workspace_id == ctx.workspace.id)
        .group_by(ModelVersion.registered_model_id)
    )
    return {model_id: count for model_id, count in rows}


def count_models(*, session: Session, ctx: WorkspaceContext) -> int:
    query = select(func.count()).select_from(RegisteredModel)
    return session.scalar(query.where(RegisteredModel.workspace_id == ctx.workspace.id)) or 0


def count_versions(*, session: Session, ctx: WorkspaceContext) -> int:
    query = select(func.count()).select_from(ModelVersion)
    return session.scalar(query.where(ModelVersion.workspace_id == ctx.workspace.id)) or 0


def find_by_serving_name(
    *, session: Session, ctx: WorkspaceContext, name: str
) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(
            ModelVersion.workspace_id == ctx.workspace.id, ModelVersion.serving_name == name
        )
    )


def version_for_run(*, session: Session, run_id: int) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.run_id == run_id).order_by(ModelVersion.id.desc())
    )


def versions_by_checkpoint(*, session: Session, run_id: int) -> dict[int, ModelVersion]:
    """The versions registered from a run's checkpoints, by checkpoint id (the run page)."""
    rows = session.scalars(
        select(ModelVersion).where(
            ModelVersion.run_id == run_id, ModelVersion.checkpoint_id.is_not(None)
        )
    )
    return {int(v.checkpoint_id): v for v in rows if v.checkpoint_id is not None}


def set_tags(
    *, session: Session, ctx: WorkspaceContext, version_id: int, tags: list[str]
) -> ModelVersion:
    version = registry_access.get_version_for_editor(
        session=session, ctx=ctx, version_id=version_id
    )
    cleaned = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    if len(cleaned) > MAX_TAGS:
        raise ValidationFailed(f"at most {MAX_TAGS} tags per version", param="tags")
    for tag in cleaned:
        if not TAG_RE.match(tag):
            raise ValidationFailed(
                f"tag {tag[:50]!r} must be 1-40 letters, digits or . _ : = / -", param="tags"
            )
    version.tags = cleaned
    session.flush()
    return version
