"""What the inference server is asked to load: a `ServingTarget` (its key there, the folder or
object key to load, the name it answers to, the deployment's settings).

Kept apart from the deployment records and from the HTTP calls, because every path that
reaches the inference server starts from one: a deploy, the reconcile loop, the `/v1` facade,
the playground, a classifier's /predict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypedDict

from app.core.errors import NotFound
from app.db.models import Deployment, ModelVersion
from app.services import artifacts
from app.services.artifact_store import remote_store

# Without a known context window (a GGUF-only folder, say) a deployment answers this many.
FALLBACK_MAX_NEW_TOKENS = 256
MAX_DEFAULT_NEW_TOKENS = 512


def inference_key(version: ModelVersion) -> str:
    """The name a version is loaded under in the inference server (globally unique)."""
    return f"mv-{version.id}"


@dataclass(frozen=True)
class DeploymentSettings:
    """What a person chooses when deploying; also the defaults of an on-demand load."""

    replicas: int = 1
    max_batch_size: int = 8
    max_new_tokens: int | None = None  # None: from the model's context (default_max_new_tokens)
    temperature: float = 0.7
    top_p: float = 1.0


class LoadOptions(TypedDict, total=False):
    """What the inference server's load takes of a deployment's settings."""

    replicas: int
    max_batch_size: int


@dataclass(frozen=True)
class ServingTarget:
    """One thing the inference server can load and answer for: `key` is its name there,
    `serving_name` the `model` callers use, `settings` its deployment's (None: loaded on
    demand, with the server's defaults)."""

    key: str
    path: str
    serving_name: str
    deployment_id: int | None = None
    settings: DeploymentSettings | None = field(default=None)

    @property
    def load_options(self) -> LoadOptions:
        if self.settings is None:
            return {}
        return {"replicas": self.settings.replicas, "max_batch_size": self.settings.max_batch_size}


def context_length(version: ModelVersion) -> int | None:
    """The version's context window from its config.json (GPT-2's n_positions, else
    max_position_embeddings); None when the folder has no readable config."""
    try:
        config = json.loads(artifacts.read_member(version.storage_key, "config.json"))
    except (OSError, ValueError, NotFound):
        return None
    if not isinstance(config, dict):
        return None
    value = config.get("n_positions") or config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def default_max_new_tokens(version: ModelVersion) -> int:
    """A deployment's default answer length: half the model's context (the rest is for the
    prompt and history), at most MAX_DEFAULT_NEW_TOKENS. A 128-token scratch model answers up
    to 64 tokens, SmolLM2 up to 512; each request still gets only what fits after its prompt."""
    context = context_length(version)
    if context is None:
        return FALLBACK_MAX_NEW_TOKENS
    return max(1, min(MAX_DEFAULT_NEW_TOKENS, context // 2))


def settings_of(deployment: Deployment) -> DeploymentSettings:
    return DeploymentSettings(
        replicas=deployment.replicas,
        max_batch_size=deployment.max_batch_size,
        max_new_tokens=deployment.max_new_tokens,
        temperature=deployment.temperature,
        top_p=deployment.top_p,
    )


def serving_path(storage_key: str) -> str:
    """What the inference server is asked to load: the folder's path on a shared disk, or,
    with object storage, the key itself, which the server pulls into its own cache
    (workers/inference/registry.py; docs/fleet.md)."""
    if remote_store() is not None:
        return storage_key  # not looked up per request: the server says if it is missing
    return str(artifacts.existing(storage_key))


def target_for_version(
    version: ModelVersion, deployment: Deployment | None = None
) -> ServingTarget:
    return ServingTarget(
        key=inference_key(version),
        path=serving_path(version.storage_key),
        serving_name=deployment.name if deployment and deployment.name else version.serving_name,
        deployment_id=deployment.id if deployment else None,
        settings=settings_of(deployment) if deployment else None,
    )
