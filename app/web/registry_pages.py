"""A model version's page: stage moves, tags, history, downloads, exports and evaluations with
progress; and the run page's "Register" button for any checkpoint."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden, NotFound, ValidationFailed
from app.db.base import MAX_ID
from app.db.models import JobStatus, ModelStage, ModelVersion
from app.services import artifacts
from app.services.datasets import service as datasets
from app.services.evaluation import harness_tasks
from app.services.registry import access as registry_access
from app.services.registry import evaluations as model_evaluations
from app.services.registry import exports as model_exports
from app.services.registry import gguf as gguf_support
from app.services.registry import imports as model_import
from app.services.registry import kind as model_kind
from app.services.registry import registration, stages
from app.services.registry import versions as registry
from app.services.registry.files import is_adapter
from app.services.runs import access as run_access
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect, rollback
from app.web.rendering import render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

STAGE_ACTIONS = {
    ModelStage.staging: "Move to staging",
    ModelStage.production: "Promote to production",
    ModelStage.archived: "Archive",
    ModelStage.none: "Clear stage",
}


def _teacher_compare(
    session: Session, version: ModelVersion, evaluations: list[Any]
) -> list[dict[str, Any]] | None:
    """A distilled version beside its teacher: size, final losses, newest evaluation."""
    teacher_id = (version.lineage or {}).get("teacher_version_id")
    teacher = session.get(ModelVersion, int(teacher_id)) if teacher_id is not None else None
    if teacher is None or teacher.workspace_id != version.workspace_id:
        return None

    def row(label: str, v: ModelVersion, evals: list[Any]) -> dict[str, Any]:
        metrics = (v.lineage or {}).get("metrics") or {}
        done = [e for e in evals if e.status == JobStatus.succeeded and e.metrics]
        return {
            "label": label,
            "version": v,
            "size_bytes": v.size_bytes,
            "eval_loss": metrics.get("eval_loss"),
            "tokens_per_second": metrics.get("tokens_per_second"),
            "evaluation": done[0].metrics if done else {},
        }

    teacher_evals = model_evaluations.list_evaluations(session=session, version=teacher)
    return [row("student", version, evaluations), row("teacher", teacher, teacher_evals)]


def _version_context(session: Session, pc: PageContext, version: ModelVersion) -> dict[str, Any]:
    exports = model_exports.list_exports(session=session, version=version)
    evaluations = model_evaluations.list_evaluations(session=session, version=version)
    active = (JobStatus.queued, JobStatus.running)
    try:
        adapter = is_adapter(artifacts.existing(version.storage_key))
    except DomainError:
        adapter = False
    try:
        gguf_support.check_exportable(artifacts.existing(version.storage_key))
        gguf_refusal = None
    except DomainError as exc:  # not a model llama.cpp runs (or its files are gone): no button
        gguf_refusal = exc.message
    try:
        gate_ok, gate_message = stages.gate_status(session=session, version=version)
    except ValidationFailed as exc:  # a malformed server setting: say so, keep the page
        gate_ok, gate_message = False, exc.message
    allowed = []
    for stage, label in STAGE_ACTIONS.items():
        if stage == version.stage or not pc.can_edit:
            continue
        if ModelStage.production in (stage, version.stage) and not pc.is_owner:
            continue
        allowed.append((stage.value, label))
    return {
        "teacher_compare": _teacher_compare(session, version, evaluations),
        "version": version,
        "classifier": model_kind.is_classifier(version),
        "entity_model": model_kind.is_token_classifier(version),
        "model": version.registered_model,
        "lineage": version.lineage or {},
        "history": stages.stage_history(session=session, ctx=pc.ctx, version_id=version.id),
        "exports": exports,
        "evaluations": evaluations,
        "polling": any(j.status in active for j in exports)
        or any(j.status in active for j in evaluations),
        "adapter": adapter,
        "gguf_refusal": gguf_refusal,
        "gguf_quantizations": model_exports.GGUF_QUANTIZATIONS,
        "stage_actions": allowed,
        "gate_ok": gate_ok,
        "gate_message": gate_message,
        "datasets": datasets.list_for_workspace(session=session, ctx=pc.ctx, limit=100, offset=0),
        "dataset_names": datasets.names_for(
            session=session,
            ctx=pc.ctx,
            ids={e.dataset_id for e in evaluations if e.dataset_id}
            | (
                {version.lineage["dataset_id"]}
                if (version.lineage or {}).get("dataset_id")
                else set()
            ),
        ),
        "owner_only": not pc.is_owner and pc.can_edit,
    }


def _page(
    request: Request,
    session: Session,
    pc: PageContext,
    version_id: int,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    version = registry_access.get_version_for_member(
        session=session, ctx=pc.ctx, version_id=version_id
    )
    context = {**_version_context(session, pc, version), "error": error}
    return render(request, "model_version.html", context, status_code=status_code, block="jobs")


@router.get("/models/versions/{version_id}")
def version_page(version_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    """The whole page; htmx polls only the jobs block while an export or evaluation runs."""
    return _page(request, session, pc, version_id)


def _act(
    request: Request, session: Session, pc: PageContext, version_id: int, action: Any
) -> Response:
    """Run one change; on a refusal show the page again with the reason (nothing is kept)."""
    try:
        action()
    except DomainError as exc:
        if exc.status_code == 404:
            raise
        rollback(request)
        return _page(
            request, session, pc, version_id, error=exc.message, status_code=exc.status_code
        )
    return redirect(request, f"/models/versions/{version_id}")


@router.post("/models/versions/{version_id}/stage", dependencies=[CSRF])
def move_stage(
    version_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    stage: Annotated[str, Form(max_length=20)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _act(
        request,
        session,
        pc,
        version_id,
        lambda: stages.set_stage(
            session=session, ctx=pc.ctx, version_id=version_id, stage=stage, reason=reason
        ),
    )


@router.post("/models/versions/{version_id}/tags", dependencies=[CSRF])
def edit_tags(
    version_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    tags: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    return _act(
        request,
        session,
        pc,
        version_id,
        lambda: registry.set_tags(
            session=session, ctx=pc.ctx, version_id=version_id, tags=tags.split(",")
        ),
    )


@router.post("/models/versions/{version_id}/exports", dependencies=[CSRF])
def start_export(
    version_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    kind: Annotated[str, Form(max_length=20)] = "onnx",
    quantize: Annotated[bool, Form()] = False,
    quantization: Annotated[str | None, Form(max_length=40)] = None,
) -> Response:
    return _act(
        request,
        session,
        pc,
        version_id,
        lambda: model_exports.create_export(
            session=session,
            ctx=pc.ctx,
            version_id=version_id,
            kind=kind,
            quantize=quantize,
            quantization=quantization,
        ),
    )


@router.post("/models/versions/{version_id}/evaluations", dependencies=[CSRF])
def start_evaluation(
    version_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    dataset_id: Annotated[int, Form(ge=1, le=MAX_ID)],
) -> Response:
    return _act(
        request,
        session,
        pc,
        version_id,
        lambda: model_evaluations.create_evaluation(
            session=session, ctx=pc.ctx, version_id=version_id, dataset_id=dataset_id
        ),
    )


@router.post("/models/versions/{version_id}/harness-evaluations", dependencies=[CSRF])
def start_harness_evaluation(
    version_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form(max_length=60)] = "",
    task_type: Annotated[str, Form(max_length=20)] = "",
    num_fewshot: Annotated[int, Form(ge=0, le=25)] = 0,
    metrics: Annotated[list[str] | None, Form()] = None,
    regex: Annotated[str, Form(max_length=200)] = "",
    apply_chat_template: Annotated[bool, Form()] = False,
) -> Response:
    """The version page's harness form: the same service as the API (a refusal is shown on
    the page with its reason)."""
    data = harness_tasks.read_upload(file.file)
    return _act(
        request,
        session,
        pc,
        version_id,
        lambda: model_evaluations.create_harness_evaluation(
            session=session,
            ctx=pc.ctx,
            version_id=version_id,
            data=data,
            filename=file.filename or "tasks.jsonl",
            name=name or None,
            task_type=task_type or None,
            num_fewshot=num_fewshot,
            metrics=metrics or None,
            regex=regex or None,
            apply_chat_template=apply_chat_template,
        ),
    )


@router.post("/runs/{run_id}/checkpoints/{checkpoint_id}/register", dependencies=[CSRF])
def register_checkpoint(
    run_id: int, checkpoint_id: int, request: Request, session: DbDep, pc: PageDep
) -> Response:
    """The run page's button: register this checkpoint and open its version page."""
    run = run_access.get_for_editor(session=session, ctx=pc.ctx, run_id=run_id)
    version, _ = registration.register_checkpoint_by_id(
        session=session, ctx=pc.ctx, checkpoint_id=checkpoint_id
    )
    if version.run_id != run.id:
        rollback(request)
        raise NotFound(f"checkpoint {checkpoint_id} not found in run {run_id}")
    return redirect(request, f"/models/versions/{version.id}")


@router.post("/models/import", dependencies=[CSRF])
def import_model(
    request: Request,
    session: DbDep,
    pc: PageDep,
    name: Annotated[str, Form(max_length=64)],
    path: Annotated[str, Form(max_length=1024)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """The registry page's import form: a path under the import folder, or an uploaded file."""
    from app.web.models_pages import models_page_with_error

    try:
        if file is not None and file.filename:
            version = model_import.import_from_upload(
                session=session, ctx=pc.ctx, name=name, stream=file.file, filename=file.filename
            )
        elif path.strip():
            version = model_import.import_from_path(
                session=session, ctx=pc.ctx, name=name, path=path.strip()
            )
        else:
            raise ValidationFailed("give a path under the import folder or choose a file")
    except Forbidden:
        raise
    except DomainError as exc:
        rollback(request)
        return models_page_with_error(request, session, pc, exc.message, exc.status_code)
    return redirect(request, f"/models/versions/{version.id}")
