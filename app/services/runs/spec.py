"""A run as one config document (JSON or YAML): download it, edit it, launch it again.

The document is the launch request itself — base model, datasets, name, suffix and the
hyperparameters — so a downloaded file posts back unchanged and a clone is "this document,
with these overrides".
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.db.models import Run
from app.services.runs import access as run_access
from app.services.runs import service as runs
from app.services.runs.config import RunConfig
from app.services.workspaces.access import WorkspaceContext

MAX_SPEC_BYTES = 64 * 1024


class RunSpec(BaseModel):
    """What launches a run (the same fields as POST /api/v1/runs)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    dataset_version_id: int | None = None  # None: the dataset's newest ready version
    validation_dataset_id: int | None = None
    base_model: str | None = None  # None: chosen by the data (run_presets)
    name: str | None = Field(None, max_length=255)
    suffix: str | None = Field(None, max_length=40)
    config: RunConfig = Field(default_factory=RunConfig)


def spec_of(run: Run) -> dict[str, Any]:
    return {
        "name": run.name,
        "base_model": run.base_model,
        "dataset_id": run.dataset_id,
        "dataset_version_id": run.dataset_version_id,
        "validation_dataset_id": run.validation_dataset_id,
        "suffix": run.suffix,
        # Through RunConfig: fields added since the run was launched show their defaults.
        "config": RunConfig.model_validate(
            {k: v for k, v in run.config.items() if k in RunConfig.model_fields}
        ).model_dump(),
    }


def dump(spec: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        return str(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return json.dumps(spec, indent=2) + "\n"


def parse(text: str) -> dict[str, Any]:
    """JSON or YAML (JSON is YAML); only plain data, never YAML's object tags."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise ValidationFailed(f"the config is larger than {MAX_SPEC_BYTES // 1024} KiB")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationFailed(f"the config is not valid YAML or JSON{where}") from None
    if not isinstance(data, dict):
        raise ValidationFailed("the config must be a mapping of fields (base_model, config, …)")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; the nested `config` is merged key by key."""
    merged = {**base, **{k: v for k, v in overrides.items() if k != "config"}}
    if "config" in overrides:
        if not isinstance(overrides["config"], dict):
            raise ValidationFailed("config must be a mapping of hyperparameters", param="config")
        merged["config"] = {**base.get("config", {}), **overrides["config"]}
    return merged


def validate(data: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ValidationFailed(f"{where}: {first['msg']}", param=where) from None


def launch(*, session: Session, ctx: WorkspaceContext, spec: RunSpec) -> Run:
    return runs.create_run(
        session=session,
        ctx=ctx,
        dataset_id=spec.dataset_id,
        dataset_version_id=spec.dataset_version_id,
        validation_dataset_id=spec.validation_dataset_id,
        base_model=spec.base_model,
        config=spec.config,
        name=spec.name,
        suffix=spec.suffix,
    )


def clone(
    *, session: Session, ctx: WorkspaceContext, run_id: int, overrides: dict[str, Any]
) -> Run:
    """Launch a new run from another's config, with optional overrides."""
    source = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
    spec = validate(merge(spec_of(source), overrides))
    if "name" not in overrides:
        spec = spec.model_copy(update={"name": f"{source.name} (clone)"[:255]})
    return launch(session=session, ctx=ctx, spec=spec)
