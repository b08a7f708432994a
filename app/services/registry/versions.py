"""The model registry: numbered versions of registered models with lineage, per workspace."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.core.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import (
    Checkpoint,
    Evaluation,
    JobStatus,
    ModelStage,
    ModelVersion,
    RegisteredModel,
    Role,
    Run,
    StageChange,
    User,
    Workspace,
)
from app.services import artifacts, audit
from app.services.workspaces import WorkspaceContext, get_in_workspace

# Files that make up a model's weights: what the content hash covers.
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=/-]{0,39}$")
MAX_TAGS = 20
_PROJECT_ROOT = Path(__file__).resolve().parents[3]


@lru_cache
def code_version() -> str:
    """The code that registered a version: the git commit when run from a checkout, else the
    installed package's version (a wheel or a container has no .git)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(_PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", result.stdout.strip()):
            return f"git:{result.stdout.strip()[:12]}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"llmide=={importlib.metadata.version('llmide')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model folder (or the GGUF file itself), in a stable order."""
    if path.is_file():
        return [path]
    return sorted(
        (p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)),
        key=lambda p: p.name,
    )


def content_fingerprint(path: Path) -> tuple[str, int]:
    """SHA-256 over the weight files (name and bytes, by name) and their total size.

    Two versions with the same hash hold the same weights, whatever their folder or run.
    """
    digest = hashlib.sha256()
    total = 0
    for file in weight_files(path):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total


def _fingerprint_key(key: str) -> tuple[str | None, int | None]:
    try:
        path = artifacts.existing(key)
    except (NotFound, ValidationFailed):
        return None, None
    return content_fingerprint(path)


def model_name_for_run(run: Run) -> str:
    return run.suffix or f"{run.base_model}-run-{run.id}"


def serving_name_for(run: Run, workspace_slug: str) -> str:
    """OpenAI-style fine-tuned model id: ft:BASE:WORKSPACE[:SUFFIX]:RUN."""
    parts = ["ft", run.base_model, workspace_slug]
    if run.suffix:
        parts.append(run.suffix)
    parts.append(f"run-{run.id}")
    return ":".join(parts)


def _base_version_lineage(session: Session, version_id: Any) -> dict[str, Any]:
    if version_id is None:
        return {}
    base = session.get(ModelVersion, int(version_id))
    if base is None:
        return {"base_version_id": int(version_id)}
    return {
        "base_version_id": base.id,
        "base_version_name": base.serving_name,
        "base_run_id": base.run_id,
    }


def _teacher_lineage(session: Session, config: dict[str, Any], run: Run) -> dict[str, Any]:
    """Who taught this model: the run's logit-distillation teacher, or (sequence-level
    distillation) the model whose generated answers the run's dataset version holds."""
    name = config.get("teacher")
    version_id = config.get("teacher_version_id")
    out: dict[str, Any] = {}
    if name:
        out = {"teacher": name, "distillation": "logits"}
    else:
        generated = ((run.dataset_version.recipe or {}) if run.dataset_version else {}).get(
            "generate"
        )
        if not isinstance(generated, dict) or not generated.get("model"):
            return {}
        name = str(generated["model"])
        out = {"teacher": name, "distillation": "sequences"}
        version_id = session.scalar(
            select(ModelVersion.id).where(
                ModelVersion.workspace_id == run.workspace_id, ModelVersion.serving_name == name
            )
        )
    teacher = session.get(ModelVersion, int(version_id)) if version_id is not None else None
    if teacher is not None:
        out.update(
            teacher_version_id=teacher.id,
            teacher_run_id=teacher.run_id,
            teacher_size_bytes=teacher.size_bytes,
        )
    return out


def register_checkpoint(
    *, session: Session, run: Run, checkpoint: Checkpoint, user_id: int | None = None
) -> ModelVersion:
    """Register one checkpoint of a run (the final one, or any other) as the next version.

    Registering the same checkpoint again returns its existing version.
    """
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
    sha256, size = _fingerprint_key(checkpoint.storage_key)
    config = run.config or {}
    version = ModelVersion(
        workspace_id=run.workspace_id,
        registered_model_id=model.id,
        version=next_version,
        serving_name=serving_name,
        run_id=run.id,
        checkpoint_id=checkpoint.id,
        storage_key=checkpoint.storage_key,
        source="run",
        content_sha256=sha256,
        size_bytes=size,
        code_version=code_version(),
        created_by_id=user_id if user_id is not None else run.created_by_id,
        lineage={
            "run_id": run.id,
            "run_name": run.name,
            "base_model": run.base_model,
            "dataset_id": run.dataset_id,
            "dataset_sha256": run.dataset.sha256 if run.dataset is not None else None,
            # Set when the run names a dataset version (datasets helper's schema).
            "dataset_version_id": config.get("dataset_version_id"),
            "validation_dataset_id": run.validation_dataset_id,
            "config": run.config,
            "step": checkpoint.step,
            "is_final": checkpoint.is_final,
            "metrics": checkpoint.metrics,
            # Tuned from a registered version (SFT → DPO): that version and its own run.
            **_base_version_lineage(session, config.get("base_version_id")),
            # Distilled from a teacher (a version of this registry, or a base model).
            **_teacher_lineage(session, config, run),
        },
        tags=[],
        stage=ModelStage.none,
    )
    session.add(version)
    session.flush()
    # Registration is automatic when a run succeeds: it is then recorded as done by the person
    # who launched the run (the worker acts on their behalf); a manual one by whoever asked.
    actor_id = user_id if user_id is not None else run.created_by_id
    actor = session.get(User, actor_id) if actor_id is not None else None
    audit.record(
        session=session,
        actor=actor,
        action="model.register",
        target_type="model_version",
        target_id=version.id,
        detail={"serving_name": serving_name, "version": next_version, "run_id": run.id},
        workspace_id=run.workspace_id,
    )
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


# --- registering from the API ---------------------------------------------------------------
def register_checkpoint_by_id(
    *, session: Session, ctx: WorkspaceContext, checkpoint_id: int
) -> tuple[ModelVersion, bool]:
    """Register any checkpoint of any run of the workspace; (version, created)."""
    ctx.require(Role.editor)
    checkpoint = session.get(Checkpoint, checkpoint_id) if 0 < checkpoint_id < 2**31 else None
    run = session.get(Run, checkpoint.run_id) if checkpoint is not None else None
    if checkpoint is None or run is None or run.workspace_id != ctx.workspace.id:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.checkpoint_id == checkpoint.id)
    )
    if existing is not None:
        return existing, False
    try:
        folder = artifacts.existing(checkpoint.storage_key)
    except NotFound as exc:
        raise Conflict(
            f"checkpoint at step {checkpoint.step} is no longer on disk "
            "(deleted by the run's checkpoint limit?); it cannot be registered"
        ) from exc
    if not weight_files(folder):
        raise Conflict(f"checkpoint at step {checkpoint.step} holds no safetensors weights")
    version = register_checkpoint(
        session=session, run=run, checkpoint=checkpoint, user_id=ctx.user.id
    )
    return version, True


# --- stages ---------------------------------------------------------------------------------
def _needs_owner(from_stage: str, to_stage: str) -> bool:
    """Production is what the company calls: only an owner puts a version in or takes it out."""
    return ModelStage.production in (from_stage, to_stage)


def parse_gate(gate: str) -> tuple[str, str, float]:
    """ "perplexity<=40" -> ("perplexity", "<=", 40.0); a bad setting is a clear error."""
    match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", gate)
    if not match:
        raise ValidationFailed(
            f"LLMIDE_PRODUCTION_GATE {gate!r} is not of the form metric<=number or metric>=number"
        )
    return match.group(1), match.group(2), float(match.group(3))


def gate_status(*, session: Session, version: ModelVersion) -> tuple[bool, str]:
    """Whether the version may go to production under the server's gate, and why (not)."""
    gate = get_settings().production_gate
    if not gate:
        return True, "no evaluation is required for production"
    metric, op, threshold = parse_gate(gate)
    evaluations = session.scalars(
        select(Evaluation)
        .where(
            Evaluation.model_version_id == version.id,
            Evaluation.status == JobStatus.succeeded,
        )
        .order_by(Evaluation.id.desc())
    )
    seen: list[float] = []
    for evaluation in evaluations:
        value = (evaluation.metrics or {}).get(metric)
        if not isinstance(value, (int, float)):
            continue
        seen.append(float(value))
        if (value <= threshold) if op == "<=" else (value >= threshold):
            return True, f"evaluation {evaluation.id}: {metric} = {value:.4g} ({op} {threshold:g})"
    if not seen:
        return False, (
            f"promoting to production needs a finished evaluation with {metric} {op} "
            f"{threshold:g}; version {version.version} has none with {metric}: run an "
            "evaluation first"
        )
    best = min(seen) if op == "<=" else max(seen)
    return False, (
        f"promoting to production needs {metric} {op} {threshold:g}; the best evaluation of "
        f"version {version.version} has {metric} = {best:.4g}"
    )


def set_stage(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    stage: str,
    reason: str | None = None,
) -> ModelVersion:
    """Move a version to a stage, recording who and when.

    Editors move versions between none, staging and archived; only owners move one into or
    out of production. One production version per registered model: the previous one is
    archived, and that move is recorded too. Moving to the stage it is in changes nothing.
    """
    ctx.require(Role.editor)
    try:
        target = ModelStage(stage)
    except ValueError as exc:
        raise ValidationFailed(
            f"unknown stage {stage!r}; use one of none, staging, production, archived",
            param="stage",
        ) from exc
    version = get_version_for_member(session=session, ctx=ctx, version_id=version_id)
    # Lock the registered model: two promotions at once must not leave two in production.
    session.execute(
        select(RegisteredModel.id)
        .where(RegisteredModel.id == version.registered_model_id)
        .with_for_update()
    )
    session.refresh(version)
    if version.stage == target:
        return version
    if _needs_owner(version.stage, target) and ctx.role != Role.owner:
        raise Forbidden(
            f"only an owner of workspace '{ctx.workspace.name}' may move a version "
            f"{'into' if target == ModelStage.production else 'out of'} production "
            f"(your role is {ctx.role})"
        )
    if target == ModelStage.production:
        ok, why = gate_status(session=session, version=version)
        if not ok:
            raise Conflict(why)
        current = session.scalars(
            select(ModelVersion).where(
                ModelVersion.registered_model_id == version.registered_model_id,
                ModelVersion.stage == ModelStage.production,
                ModelVersion.id != version.id,
            )
        )
        for previous in current:
            _record(session, ctx, previous, ModelStage.archived, f"replaced by v{version.version}")
    _record(session, ctx, version, target, (reason or "").strip()[:500] or None)
    session.flush()
    return version


def _record(
    session: Session,
    ctx: WorkspaceContext,
    version: ModelVersion,
    target: ModelStage,
    reason: str | None,
) -> None:
    session.add(
        StageChange(
            workspace_id=version.workspace_id,
            model_version_id=version.id,
            from_stage=version.stage,
            to_stage=target,
            reason=reason,
            user_id=ctx.user.id,
            created_at=utcnow(),
        )
    )
    audit.record(
        session=session,
        actor=ctx,
        action="model.promote" if target == ModelStage.production else "model.stage",
        target_type="model_version",
        target_id=version.id,
        detail={"from": str(version.stage), "to": str(target), "reason": reason},
    )
    version.stage = target


def stage_history(
    *, session: Session, ctx: WorkspaceContext, version_id: int
) -> list[tuple[StageChange, str | None]]:
    """A version's moves, oldest first, with the e-mail of who made each."""
    version = get_version_for_member(session=session, ctx=ctx, version_id=version_id)
    rows = session.execute(
        select(StageChange, User.email)
        .outerjoin(User, User.id == StageChange.user_id)
        .where(StageChange.model_version_id == version.id)
        .order_by(StageChange.id)
    )
    return [(change, email) for change, email in rows]


def set_tags(
    *, session: Session, ctx: WorkspaceContext, version_id: int, tags: list[str]
) -> ModelVersion:
    ctx.require(Role.editor)
    version = get_version_for_member(session=session, ctx=ctx, version_id=version_id)
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


def validate_model_name(name: str) -> str:
    name = name.strip()
    if not MODEL_NAME_RE.match(name):
        raise ValidationFailed(
            "a model name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            param="name",
        )
    return name


def get_or_create_model(*, session: Session, ctx: WorkspaceContext, name: str) -> RegisteredModel:
    model = session.scalar(
        select(RegisteredModel).where(
            RegisteredModel.workspace_id == ctx.workspace.id, RegisteredModel.name == name
        )
    )
    if model is None:
        model = RegisteredModel(workspace_id=ctx.workspace.id, name=name)
        session.add(model)
        session.flush()
    return model


def next_version_number(*, session: Session, model: RegisteredModel) -> int:
    current = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.registered_model_id == model.id)
    )
    return (current or 0) + 1


def get_model_for_member(
    *, session: Session, ctx: WorkspaceContext, model_id: int
) -> RegisteredModel:
    return get_in_workspace(
        session=session, ctx=ctx, model=RegisteredModel, row_id=model_id, what="registered model"
    )


def versions_by_checkpoint(*, session: Session, run_id: int) -> dict[int, ModelVersion]:
    """The versions registered from a run's checkpoints, by checkpoint id (the run page)."""
    rows = session.scalars(
        select(ModelVersion).where(
            ModelVersion.run_id == run_id, ModelVersion.checkpoint_id.is_not(None)
        )
    )
    return {int(v.checkpoint_id): v for v in rows if v.checkpoint_id is not None}
