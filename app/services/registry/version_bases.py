"""A registered model version as the base of a new run (SFT → DPO, a student's teacher, ...).

A run names the version by its serving name; the run records the version's id in its config
(`base_version_id`), the worker loads the version's own folder, and the new version's lineage
points back at it, so the registry shows both runs.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound, ValidationFailed
from app.db.models import ModelVersion
from app.services import artifacts
from app.services.registry import base_models
from app.services.registry import versions as registry
from app.services.workspaces.access import WorkspaceContext


def as_base(version: ModelVersion) -> base_models.BaseModel:
    """The version as a base model entry: a Hugging Face folder in the artifact store.

    Refused (naming the model) when it is not a causal LM in safetensors (a GGUF import, a
    classifier): those cannot be trained further here.
    """
    name = version.serving_name
    try:
        folder = artifacts.resolve(version.storage_key)
        # Only its config.json: the web checks a launch without fetching the weights from
        # object storage (docs/fleet.md); the worker fetches the folder before training.
        config = json.loads(artifacts.read_member(version.storage_key, "config.json"))
    except (OSError, ValueError, NotFound) as exc:
        raise ValidationFailed(
            f"version {name!r} has no Hugging Face model folder to train from ({exc})",
            param="model",
        ) from None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        raise ValidationFailed(
            f"version {name!r} is not a causal language model ({', '.join(architectures) or '?'})"
            ": only those can be tuned further",
            param="model",
        )
    model_type = str(config.get("model_type", "unknown"))
    return base_models.BaseModel(
        name=name,
        description=f"registered version {name}",
        parameters="?",
        context_length=int(config.get("n_positions") or config.get("max_position_embeddings") or 0),
        architecture=model_type,
        tasks=base_models.CAUSAL_TASKS,
        source="version",
        path=str(folder),
        languages="what its own training data taught it",
    )


def resolve(
    *, session: Session, ctx: WorkspaceContext, name: str
) -> tuple[base_models.BaseModel, ModelVersion | None]:
    """A run's base by name: a known base model, else one of the workspace's versions."""
    version = (
        None
        if name in base_models.CATALOG
        else registry.find_by_serving_name(session=session, ctx=ctx, name=name)
    )
    if version is not None:
        return as_base(version), version
    return base_models.require_known(name), None


def offered(
    *, session: Session, ctx: WorkspaceContext, limit: int = 20
) -> list[base_models.BaseModel]:
    """The workspace's newest versions a run can start from (the launch form lists them after
    the base models); a version that cannot be a base (a classifier, a GGUF import) is left out.
    """
    versions = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.workspace_id == ctx.workspace.id)
        .order_by(ModelVersion.id.desc())
        .limit(limit)
    )
    found = []
    for version in versions:
        try:
            found.append(as_base(version))
        except ValidationFailed:
            continue
    return found
