"""Dataset page panels: the versions list with the Prepare form (progress while a version is
prepared), and the model view (tokens coloured by loss, polled while a worker computes it).

Both are fragments the dataset page loads with htmx (`hx-get ... hx-trigger="load"`); opened
directly they render as pages of their own, so every link works without JavaScript.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden, ValidationFailed
from app.core.prep_recipe import STEP_NAMES
from app.db.models import Dataset, DatasetVersion, DatasetVersionStatus
from app.services import batches
from app.services.datasets import access as dataset_access
from app.services.datasets import prep as dataset_prep
from app.services.registry import versions as registry
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, rollback
from app.web.rendering import render

router = APIRouter(prefix="/datasets", route_class=PageRoute, include_in_schema=False)

STEP_LABELS = {
    "strip_html": "Strip HTML / markup",
    "nfkc": "Unicode NFKC normalisation",
    "whitespace": "Whitespace clean-up",
    "pii_mask": "Mask e-mails, phone numbers, URLs",
    "length_filter": "Length filter",
    "exact_dedup": "Exact de-duplication",
    "near_dedup": "Near-duplicate removal (MinHash)",
    "language_filter": "Language filter",
}
DEFAULT_ORDER = list(STEP_LABELS)


def _versions(session: Session, dataset: Dataset) -> list[DatasetVersion]:
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.version.desc())
            .limit(50)
        )
    )


def _panel(
    request: Request,
    session: Session,
    pc: PageContext,
    dataset_id: int,
    *,
    block: str = "versions_panel",
    **extra: Any,
) -> Response:
    dataset = dataset_access.get_for_member(session=session, ctx=pc.ctx, dataset_id=dataset_id)
    versions = _versions(session, dataset)
    return render(
        request,
        "_dataset_versions.html",
        {
            "dataset": dataset,
            "versions": versions,
            "ready": [v for v in versions if v.status == DatasetVersionStatus.ready],
            "busy": any(v.status == DatasetVersionStatus.preparing for v in versions),
            "step_labels": STEP_LABELS,
            "default_order": DEFAULT_ORDER,
            "model_names": [
                v.serving_name for v in registry.list_versions(session=session, ctx=pc.ctx)
            ],
            "form": {},
            **extra,
        },
        block=block,
    )


@router.get("/{dataset_id}/versions-panel")
def versions_panel(dataset_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """The whole panel, or only the versions table (what the progress polling refreshes)."""
    part = request.query_params.get("part")
    block = "versions_table" if part == "table" else "versions_panel"
    return _panel(request, session, pc, dataset_id, block=block)


def _number(form: FormData, name: str, kind: type = float) -> Any:
    value = str(form.get(name) or "").strip()
    if value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValidationFailed(f"{name.replace('_', ' ')} must be a number", param=name) from None


def recipe_from_form(form: FormData) -> tuple[int, dict[str, Any]]:
    """The Prepare form as (parent version id, recipe dict): checked steps in the order given."""
    chosen = []
    for name in STEP_NAMES:
        if form.get(f"step_{name}"):
            order = _number(form, f"order_{name}", int)
            chosen.append((order if order is not None else 99, DEFAULT_ORDER.index(name), name))
    steps: list[dict[str, Any]] = []
    for _, _, name in sorted(chosen):
        step: dict[str, Any] = {"step": name}
        if name == "length_filter":
            step["unit"] = str(form.get("length_unit") or "chars")
            step["min"] = _number(form, "length_min", int)
            step["max"] = _number(form, "length_max", int)
            if step["unit"] == "tokens":
                step["tokenizer"] = str(form.get("length_tokenizer") or "smollm2")
        elif name == "near_dedup":
            step["threshold"] = _number(form, "near_threshold") or 0.8
        elif name == "pii_mask":
            for kind in ("emails", "phones", "urls"):
                step[kind] = bool(form.get(f"pii_{kind}"))
        elif name == "language_filter":
            raw = str(form.get("languages") or "")
            step["languages"] = [
                p.strip().lower() for p in raw.replace(";", ",").split(",") if p.strip()
            ]
        steps.append(step)
    recipe: dict[str, Any] = {"steps": steps}
    method = str(form.get("split_method") or "none")
    if method != "none":
        split: dict[str, Any] = {"method": method, "seed": _number(form, "split_seed", int) or 0}
        if method == "column":
            split["column"] = str(form.get("split_column") or "").strip() or None
        else:
            split["validation"] = _number(form, "split_validation") or 0.0
            split["test"] = _number(form, "split_test") or 0.0
            split["stratify"] = bool(form.get("split_stratify"))
        recipe["split"] = split
    tokenizer = str(form.get("tokenizer") or "none")
    if tokenizer != "none":
        recipe["tokenize"] = {
            "tokenizer": tokenizer,
            "max_length": _number(form, "max_length", int) or 512,
            "packing": bool(form.get("packing")),
        }
    parent = _number(form, "parent_version_id", int)
    if parent is None:
        raise ValidationFailed("choose the version to prepare from", param="parent_version_id")
    return parent, recipe


@router.post("/{dataset_id}/versions", dependencies=[CSRF])
async def prepare_version(
    dataset_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    form = await request.form()
    try:
        parent, raw = recipe_from_form(form)
        recipe = dataset_prep.parse_recipe(raw)
        dataset_prep.create_version(
            session=session,
            ctx=pc.ctx,
            dataset_id=dataset_id,
            parent_version_id=parent,
            recipe=recipe,
        )
    except Forbidden:
        raise
    except DomainError as exc:
        rollback(request)
        return _panel(request, session, pc, dataset_id, prepare_error=exc.message, form=dict(form))
    return _panel(request, session, pc, dataset_id, prepared=True)


@router.post("/{dataset_id}/versions/generate", dependencies=[CSRF])
async def generate_answers(
    dataset_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    """A model's answer to every prompt of a version, as a batch that writes a new version."""
    form = await request.form()
    try:
        max_tokens = _number(form, "max_tokens", int)
        batch = batches.create_for_dataset(
            session=session,
            ctx=pc.ctx,
            dataset_id=dataset_id,
            version_id=_number(form, "version_id", int) or 0,
            model=str(form.get("model") or ""),
            endpoint=str(form.get("endpoint") or "/v1/chat/completions"),
            max_tokens=256 if max_tokens is None else max_tokens,
        )
    except Forbidden:
        raise
    except DomainError as exc:
        rollback(request)
        return _panel(request, session, pc, dataset_id, generate_error=exc.message, form=dict(form))
    if batch.status == "failed":
        errors = "; ".join(str(e.get("message")) for e in batch.errors or [])
        return _panel(request, session, pc, dataset_id, generate_error=errors, form=dict(form))
    return _panel(request, session, pc, dataset_id, generated=f"batch_{batch.id}")


def _view_settings(source: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name in ("tokenizer", "max_length", "sample_rows", "detail_rows"):
        value = source.get(name)
        if value not in (None, ""):
            raw[name] = value
    raw["chat_template"] = str(source.get("chat_template", "true")).lower() in (
        "1",
        "true",
        "on",
        "yes",
    )
    return raw


def _view(
    request: Request,
    session: Session,
    pc: PageContext,
    dataset_id: int,
    version_id: int,
    raw: dict[str, Any],
    *,
    start: bool,
) -> Response:
    version = dataset_access.get_version_for_member(
        session=session, ctx=pc.ctx, dataset_id=dataset_id, version_id=version_id
    )
    settings = dataset_prep.parse_model_view_settings(raw)
    if start:
        state = dataset_prep.request_model_view(
            session=session, ctx=pc.ctx, version=version, settings=settings
        )
    else:
        state = dataset_prep.model_view_state(version, settings)
    query = "&".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in settings.model_dump().items()
    )
    return render(
        request,
        "_model_view.html",
        {
            "dataset_id": dataset_id,
            "version": version,
            "settings": settings,
            "state": state,
            "query": query,
        },
        block="model_view",
    )


@router.get("/{dataset_id}/versions/{version_id}/model-view")
def model_view_panel(
    dataset_id: int, version_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    raw = _view_settings(request.query_params)
    return _view(request, session, pc, dataset_id, version_id, raw, start=False)


@router.post("/{dataset_id}/versions/{version_id}/model-view", dependencies=[CSRF])
async def model_view_start(
    dataset_id: int, version_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    raw = _view_settings(await request.form())
    return _view(request, session, pc, dataset_id, version_id, raw, start=True)
