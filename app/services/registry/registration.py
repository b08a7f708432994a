"""Registering a version: a run's checkpoint becomes the next numbered version of its registered
model, with its content hash, the code that made it and its lineage (run, data, base version,
teacher). Also the names a registration gives (the model's, the OpenAI-style serving name) and
the pieces an import without a run shares (app/services/registry/imports.py)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from app.db.models import (
    Checkpoint,
    ModelStage,
    ModelVersion,
    RegisteredModel,
    Role,
    Run,
    User,
    Workspace,
)
from app.services import artifacts
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext

# Files that make up a model's weights: what the content hash covers.
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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
