"""Run pages: the list, the launch form, one run's live view, cancel, pause, resume."""

from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden
from app.db.models import Role, RunStatus
from app.services import estimate
from app.services.datasets import access as dataset_access
from app.services.datasets import service as datasets
from app.services.datasets import versions as dataset_versions
from app.services.registry import base_models, version_bases
from app.services.registry import versions as registry
from app.services.runs import access as run_access
from app.services.runs import presets as run_presets
from app.services.runs import service as runs
from app.services.runs import spec as run_spec
from app.services.runs.config import RunConfig
from app.web.pages import (
    CSRF,
    DbDep,
    PageContext,
    PageDep,
    PageRoute,
    form_errors,
    redirect,
    rollback,
)
from app.web.rendering import is_htmx, render

router = APIRouter(prefix="/runs", route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 25
ACTIVE = {RunStatus.queued, RunStatus.running, RunStatus.interrupted}
# Service errors name the API's fields; the form's fields are named a little differently.
_PARAM_TO_FIELD = {"model": "base_model"}


class LaunchForm(BaseModel):
    """The launch form as typed (strings): validated into a RunConfig by the route."""

    name: str = ""
    suffix: str = ""
    dataset_id: str = ""
    dataset_version_id: str = ""
    validation_dataset_id: str = ""
    base_model: str = ""
    learning_rate: str = ""
    batch_size: str = ""
    epochs: str = ""
    max_steps: str = ""
    eval_split: str = ""
    seed: str = ""
    block_size: str = ""
    task_type: str = ""
    method: str = ""
    lr_scheduler: str = ""
    warmup_steps: str = ""
    warmup_ratio: str = ""
    gradient_accumulation_steps: str = ""
    weight_decay: str = ""
    max_grad_norm: str = ""
    precision: str = ""
    eval_steps: str = ""
    save_steps: str = ""
    logging_steps: str = ""
    devices: str = ""
    lora_r: str = ""
    lora_alpha: str = ""
    lora_dropout: str = ""
    beta: str = ""
    dpo_loss: str = ""
    simpo_gamma: str = ""
    kto_desirable_weight: str = ""
    kto_undesirable_weight: str = ""
    label_alignment: str = ""
    priority: str = "normal"


def _defaults(session: Session, pc: PageContext, dataset_id: int | None) -> dict[str, Any]:
    """The form as a newcomer finds it: the chosen (else newest) dataset, the base its data
    calls for and that base's preset (run_presets), the rest RunConfig's defaults."""
    values: dict[str, Any] = {
        key: "" if value is None else str(value) for key, value in RunConfig().model_dump().items()
    }
    listed = datasets.list_for_workspace(session=session, ctx=pc.ctx, limit=1)
    chosen = listed[0] if listed else None
    if dataset_id is not None:
        # Not one of this workspace's: the form lists what the person may choose.
        with contextlib.suppress(DomainError):
            chosen = dataset_access.get_for_member(
                session=session, ctx=pc.ctx, dataset_id=dataset_id
            )
    base = run_presets.default_base_model(chosen.format if chosen else None)
    values.update(
        name="",
        suffix="",
        dataset_id="" if dataset_id is None else str(dataset_id),
        dataset_version_id="",
        validation_dataset_id="",
        priority="normal",
    )
    return _with_base(values, base)


def _with_base(values: dict[str, Any], base: str) -> dict[str, Any]:
    """`values` with `base` chosen and its preset in the preset fields."""
    try:
        preset = run_presets.preset_for(base_models.require_known(base)).as_dict()
    except DomainError:  # a base that is gone (a clone of an old run): keep what is there
        preset = {}
    return {**values, "base_model": base, **{k: str(v) for k, v in preset.items()}}


def _form_page(
    request: Request,
    session: Session,
    pc: PageContext,
    values: dict[str, Any],
    errors: dict[str, str],
    status_code: int = 200,
) -> Response:
    listed = datasets.list_for_workspace(session=session, ctx=pc.ctx, limit=500)
    offered = list(base_models.available().values())
    # The workspace's own versions too: tune an SFT model with DPO, say (docs/preference.md).
    offered += version_bases.offered(session=session, ctx=pc.ctx)
    return render(
        request,
        "run_new.html",
        {
            "datasets": listed,
            "versions": dataset_versions.ready_for_datasets(session=session, datasets=listed),
            "default_bases": {d.id: run_presets.default_base_model(d.format) for d in listed},
            "base_models": offered,
            "presets": run_presets.presets_by_base(offered),
            "values": values,
            "errors": errors,
        },
        block="launch_form",
        # htmx swaps the re-rendered form only from a 2xx answer; a plain form gets the real code.
        status_code=200 if is_htmx(request) else status_code,
    )


def _optional_id(raw: str, field: str, errors: dict[str, str]) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        errors[field] = "choose one of the listed datasets"
        return None


@router.get("")
def run_list(
    request: Request,
    session: DbDep,
    pc: PageDep,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    total = runs.count_for_workspace(session=session, ctx=pc.ctx)
    items = runs.list_for_workspace(
        session=session,
        ctx=pc.ctx,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        with_dataset=True,
    )
    return render(
        request,
        "runs.html",
        {
            "runs": items,
            "total": total,
            "page": page,
            "pages": max(1, math.ceil(total / PAGE_SIZE)),
            "page_url": f"/runs?page={page}",
            "active_count": sum(1 for r in items if r.status in ACTIVE),
        },
        block="runs_table",
    )


@router.get("/new")
def new_run(
    request: Request,
    session: DbDep,
    pc: PageDep,
    dataset_id: Annotated[int | None, Query()] = None,
    clone: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """The launch form; `?clone=ID` opens it pre-filled with that run's config."""
    pc.ctx.require(Role.editor)
    values = _defaults(session, pc, dataset_id)
    if clone is not None:
        source = run_access.get_for_member(session=session, ctx=pc.ctx, run_id=clone)
        spec = run_spec.spec_of(source)
        values.update(
            {k: "" if v is None else str(v) for k, v in spec["config"].items() if k in values},
            name=f"{spec['name']} (clone)"[:255],
            suffix=spec["suffix"] or "",
            base_model=spec["base_model"],
            dataset_id=str(spec["dataset_id"]),
            dataset_version_id=str(spec.get("dataset_version_id") or ""),
            validation_dataset_id=str(spec["validation_dataset_id"] or ""),
        )
    return _form_page(request, session, pc, values, {})


@router.post("/estimate", dependencies=[CSRF])
def estimate_run(
    request: Request,
    session: DbDep,
    pc: PageDep,
    form: Annotated[LaunchForm, Form()],
) -> Response:
    """The launch form's estimate panel, re-rendered by htmx as the fields change."""
    values = form.model_dump()
    config_fields = {
        key: value.strip()
        for key in RunConfig.model_fields
        if (value := values.get(key, "")) and value.strip()
    }
    result = None
    problem = None
    try:
        result = estimate.for_launch(
            session=session,
            ctx=pc.ctx,
            base_model=form.base_model.strip() or None,
            config=RunConfig(**config_fields),
            dataset_id=_optional_id(form.dataset_id, "dataset_id", {}),
            dataset_version_id=_optional_id(form.dataset_version_id, "dataset_version_id", {}),
            has_validation=bool(form.validation_dataset_id.strip()),
        )
    except ValidationError:
        problem = "Fix the highlighted values to see an estimate."
    except DomainError as exc:
        problem = exc.message
    return render(request, "_estimate.html", {"estimate": result, "problem": problem})


@router.post("", dependencies=[CSRF])
def launch_run(
    request: Request,
    session: DbDep,
    pc: PageDep,
    form: Annotated[LaunchForm, Form()],
) -> Response:
    values = form.model_dump()
    errors: dict[str, str] = {}
    config_fields = {
        key: value.strip()
        for key in RunConfig.model_fields
        if (value := values.get(key, "")) and value.strip()
    }
    config: RunConfig | None = None
    try:
        config = RunConfig(**config_fields)
    except ValidationError as exc:
        errors.update(form_errors(exc))
    dataset_id = _optional_id(form.dataset_id, "dataset_id", errors)
    if dataset_id is None and "dataset_id" not in errors:
        errors["dataset_id"] = "choose a dataset to train on"
    validation_id = _optional_id(form.validation_dataset_id, "validation_dataset_id", errors)
    version_id = _optional_id(form.dataset_version_id, "dataset_version_id", errors)
    if errors or config is None or dataset_id is None:
        return _form_page(request, session, pc, values, errors, status_code=422)
    try:
        run = runs.create_run(
            session=session,
            ctx=pc.ctx,
            dataset_id=dataset_id,
            config=config,
            base_model=form.base_model.strip() or None,
            validation_dataset_id=validation_id,
            dataset_version_id=version_id,
            name=form.name.strip() or None,
            suffix=form.suffix.strip() or None,
            priority=form.priority,
        )
    except Forbidden:
        raise  # not a form mistake: the error page says what role is needed
    except DomainError as exc:
        rollback(request)
        field = _PARAM_TO_FIELD.get(exc.param or "", exc.param or "form")
        return _form_page(
            request, session, pc, values, {field: exc.message}, status_code=exc.status_code
        )
    return redirect(request, f"/runs/{run.id}")


@router.get("/{run_id}")
def run_detail(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """The live view; htmx asks for the side panel (checkpoints, model link, actions) only."""
    run = run_access.get_for_member(session=session, ctx=pc.ctx, run_id=run_id)
    return render(
        request,
        "run_detail.html",
        {
            "run": run,
            "progress": runs.progress(run),
            "can_resume": runs.can_resume(run),
            "latest": runs.latest_metrics(session=session, run_id=run.id),
            "events": runs.events(session=session, run_id=run.id, limit=100),
            "checkpoints": (checkpoints := runs.checkpoints(session=session, run_id=run.id)),
            "evaluation": runs.final_evaluation(checkpoints),
            "version": registry.version_for_run(session=session, run_id=run.id),
            "registered": registry.versions_by_checkpoint(session=session, run_id=run.id),
            "oob": is_htmx(request),
        },
        block=("run_side", "run_actions"),
    )


@router.post("/{run_id}/cancel", dependencies=[CSRF])
def cancel_run(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    runs.cancel(session=session, ctx=pc.ctx, run_id=run_id)
    return redirect(request, f"/runs/{run_id}")


@router.post("/{run_id}/stop", dependencies=[CSRF])
def stop_run(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """Stop and keep: the run ends early as succeeded, its model registered."""
    runs.stop_and_keep(session=session, ctx=pc.ctx, run_id=run_id)
    return redirect(request, f"/runs/{run_id}")


@router.post("/{run_id}/pause", dependencies=[CSRF])
def pause_run(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """Pause: the run stops with a checkpoint and waits for Resume (cancel discards)."""
    runs.pause(session=session, ctx=pc.ctx, run_id=run_id)
    return redirect(request, f"/runs/{run_id}")


@router.post("/{run_id}/resume", dependencies=[CSRF])
def resume_run(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    runs.resume(session=session, ctx=pc.ctx, run_id=run_id)
    return redirect(request, f"/runs/{run_id}")


def _config_page(
    request: Request, run: Any, text: str, error: str | None, status_code: int = 200
) -> Response:
    return render(
        request,
        "run_config.html",
        {"run": run, "text": text, "error": error},
        status_code=200 if is_htmx(request) else status_code,
    )


@router.get("/{run_id}/config")
def run_config(run_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """The run's config as YAML, editable: launching it starts a new run (a clone)."""
    run = run_access.get_for_member(session=session, ctx=pc.ctx, run_id=run_id)
    return _config_page(request, run, run_spec.dump(run_spec.spec_of(run), "yaml"), None)


@router.post("/{run_id}/config", dependencies=[CSRF])
def launch_from_config(
    run_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    config_text: Annotated[str, Form(max_length=run_spec.MAX_SPEC_BYTES)],
) -> Response:
    run = run_access.get_for_member(session=session, ctx=pc.ctx, run_id=run_id)
    try:
        spec = run_spec.validate(run_spec.parse(config_text))
        new = run_spec.launch(session=session, ctx=pc.ctx, spec=spec)
    except Forbidden:
        raise
    except DomainError as exc:
        rollback(request)
        return _config_page(request, run, config_text, exc.message, status_code=exc.status_code)
    return redirect(request, f"/runs/{new.id}")
