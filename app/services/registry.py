"""The model registry: numbered versions of registered models with lineage, per workspace."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.core.errors import InvalidTransition
from app.db.models import Checkpoint, ModelVersion, RegisteredModel, Run, Workspace
from app.services.workspaces import WorkspaceContext, get_in_workspace


def model_name_for_run(run: Run) -> str:
    return run.suffix or f"{run.base_model}-run-{run.id}"


def serving_name_for(run: Run, workspace_slug: str) -> str:
    """OpenAI-style fine-tuned model id: ft:BASE:WORKSPACE[:SUFFIX]:RUN."""
    parts = ["ft", run.base_model, workspace_slug]
    if run.suffix:
        parts.append(run.suffix)
    parts.append(f"run-{run.id}")
    return ":".join(parts)


def register_checkpoint(*, session: Session, run: Run, checkpoint: Checkpoint) -> ModelVersion:
    if checkpoint.deleted_at is not None:
        raise InvalidTransition(
            f"checkpoint at step {checkpoint.step} was removed by the retention policy"
        )
    workspace = session.get(Workspace, run.workspace_id)
    assert workspace is not None
    name = model_name_for_run(run)
    model = session.scalar(
        select(RegisteredModel).where(
            RegisteredModel.workspace_id == run.workspace_id, RegisteredModel.name == name
        )
    )
    if model is None:
        model = RegisteredModel(workspace_id=run.workspace_id, name=name)
        session.add(model)
        session.flush()
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.checkpoint_id == checkpoint.id)
    )
    if existing is not None:
        return existing
    next_version = (
        session.scalar(
            select(func.max(ModelVersion.version)).where(
                ModelVersion.registered_model_id == model.id
            )
        )
        or 0
    ) + 1
    serving_name = serving_name_for(run, workspace.slug)
    if next_version > 1:
        serving_name += f":v{next_version}"
    version = ModelVersion(
        workspace_id=run.workspace_id,
        registered_model_id=model.id,
        version=next_version,
        serving_name=serving_name,
        run_id=run.id,
        checkpoint_id=checkpoint.id,
        storage_key=checkpoint.storage_key,
        lineage={
            "run_id": run.id,
            "run_name": run.name,
            "base_model": run.base_model,
            "dataset_id": run.dataset_id,
            "validation_dataset_id": run.validation_dataset_id,
            "config": run.config,
            "step": checkpoint.step,
            "metrics": checkpoint.metrics,
        },
    )
    session.add(version)
    session.flush()
    return version


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


def get_version_for_member(
    *, session: Session, ctx: WorkspaceContext, version_id: int
) -> ModelVersion:
    return get_in_workspace(
        session=session, ctx=ctx, model=ModelVersion, row_id=version_id, what="model version"
    )


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
