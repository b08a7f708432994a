"""Registry actions on versions: register a checkpoint, stages, tags, import, download, exports
and evaluations. (Listing models and reading a version stay in models.py.)"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from app.api.deps import SessionDep, Workspace
from app.api.schemas.registry import (
    EvaluationCreate,
    EvaluationRead,
    ExportCreate,
    ExportRead,
    JudgeEvaluationCreate,
    ModelImportFromPath,
    ModelVersionRead,
    StageChangeRead,
    StageUpdate,
    TagsUpdate,
    VersionRegister,
)
from app.core.errors import Conflict
from app.db.models import JobStatus
from app.services import artifacts
from app.services.evaluation import harness_tasks
from app.services.registry import access as registry_access
from app.services.registry import compare as version_compare
from app.services.registry import evaluations as model_evaluations
from app.services.registry import exports as model_exports
from app.services.registry import imports as model_import
from app.services.registry import registration, stages
from app.services.registry import versions as registry
from app.services.registry.files import zip_stream

router = APIRouter(prefix="/api/v1", tags=["registry"])


@router.post("/models/versions", response_model=ModelVersionRead)
def register_version(
    body: VersionRegister, response: Response, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    """Register any checkpoint of a run (201), or return the version it already is (200)."""
    version, created = registration.register_checkpoint_by_id(
        session=session, ctx=ctx, checkpoint_id=body.checkpoint_id
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return ModelVersionRead.model_validate(version)


@router.post("/models/import", response_model=ModelVersionRead, status_code=201)
def import_from_path(
    body: ModelImportFromPath, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    version = model_import.import_from_path(
        session=session, ctx=ctx, name=body.name, path=body.path
    )
    return ModelVersionRead.model_validate(version)


@router.post("/models/import/upload", response_model=ModelVersionRead, status_code=201)
def import_upload(
    session: SessionDep,
    ctx: Workspace,
    file: Annotated[UploadFile, File(description="a .zip of a Hugging Face folder, or a .gguf")],
    name: Annotated[str, Form(max_length=64)],
) -> ModelVersionRead:
    version = model_import.import_from_upload(
        session=session, ctx=ctx, name=name, stream=file.file, filename=file.filename
    )
    return ModelVersionRead.model_validate(version)


@router.post("/model-versions/{version_id}/stage", response_model=ModelVersionRead)
def update_stage(
    version_id: int, body: StageUpdate, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    version = stages.set_stage(
        session=session, ctx=ctx, version_id=version_id, stage=body.stage, reason=body.reason
    )
    return ModelVersionRead.model_validate(version)


@router.get("/model-versions/{version_id}/history", response_model=list[StageChangeRead])
def read_history(version_id: int, session: SessionDep, ctx: Workspace) -> list[StageChangeRead]:
    rows = stages.stage_history(session=session, ctx=ctx, version_id=version_id)
    return [
        StageChangeRead.model_validate(change).model_copy(update={"user_email": email})
        for change, email in rows
    ]


@router.put("/model-versions/{version_id}/tags", response_model=ModelVersionRead)
def update_tags(
    version_id: int, body: TagsUpdate, session: SessionDep, ctx: Workspace
) -> ModelVersionRead:
    version = registry.set_tags(session=session, ctx=ctx, version_id=version_id, tags=body.tags)
    return ModelVersionRead.model_validate(version)


def _zip_response(folder_key: str, top: str) -> StreamingResponse:
    chunks, size = zip_stream(artifacts.existing(folder_key), top)
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{top}.zip"',
        },
    )


def _safe_top(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:100] or "model"


@router.get(
    "/model-versions/{version_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "A streamed zip."}},
)
def download_version(version_id: int, session: SessionDep, ctx: Workspace) -> StreamingResponse:
    """The version as a Hugging Face folder in a zip, streamed (adapters as the adapter)."""
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    name = f"{version.registered_model.name}-v{version.version}"
    return _zip_response(version.storage_key, _safe_top(name))


@router.post("/model-versions/{version_id}/exports", response_model=ExportRead, status_code=202)
def create_export(
    version_id: int, body: ExportCreate, session: SessionDep, ctx: Workspace
) -> ExportRead:
    export = model_exports.create_export(
        session=session,
        ctx=ctx,
        version_id=version_id,
        kind=body.kind,
        quantize=body.quantize,
        quantization=body.quantization,
    )
    return ExportRead.model_validate(export)


@router.get("/model-versions/{version_id}/exports", response_model=list[ExportRead])
def read_exports(version_id: int, session: SessionDep, ctx: Workspace) -> list[ExportRead]:
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    return [
        ExportRead.model_validate(e)
        for e in model_exports.list_exports(session=session, version=version)
    ]


@router.get("/model-exports/{export_id}", response_model=ExportRead)
def read_export(export_id: int, session: SessionDep, ctx: Workspace) -> ExportRead:
    return ExportRead.model_validate(
        registry_access.get_export_for_member(session=session, ctx=ctx, export_id=export_id)
    )


@router.get(
    "/model-exports/{export_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "A streamed zip."}},
)
def download_export(export_id: int, session: SessionDep, ctx: Workspace) -> StreamingResponse:
    export = registry_access.get_export_for_member(session=session, ctx=ctx, export_id=export_id)
    if export.status != JobStatus.succeeded or not export.storage_key:
        raise Conflict(f"export {export_id} is {export.status}; download it once it succeeded")
    return _zip_response(export.storage_key, f"export-{export.id}-{export.kind}")


@router.post(
    "/model-versions/{version_id}/evaluations", response_model=EvaluationRead, status_code=202
)
def create_evaluation(
    version_id: int, body: EvaluationCreate, session: SessionDep, ctx: Workspace
) -> EvaluationRead:
    evaluation = model_evaluations.create_evaluation(
        session=session,
        ctx=ctx,
        version_id=version_id,
        dataset_id=body.dataset_id,
        dataset_version_id=body.dataset_version_id,
        max_rows=body.max_rows,
        max_new_tokens=body.max_new_tokens,
        prompts=body.prompts,
    )
    return EvaluationRead.model_validate(evaluation)


@router.post(
    "/model-versions/{version_id}/harness-evaluations",
    response_model=EvaluationRead,
    status_code=202,
)
def create_harness_evaluation(
    version_id: int,
    session: SessionDep,
    ctx: Workspace,
    file: Annotated[
        UploadFile,
        File(
            description="the task rows: JSONL, JSON, CSV or TSV; multiple choice (question, "
            "choices or A/B/C/D columns, answer index or letter; MMLU's headerless CSV, C-Eval, "
            "CMMLU) or generation (prompt, answer); optional subject and split (dev) columns"
        ),
    ],
    name: Annotated[str | None, Form(max_length=60)] = None,
    task_type: Annotated[str | None, Form(description="multiple_choice or generation")] = None,
    num_fewshot: Annotated[int, Form(ge=0, le=25)] = 0,
    metrics: Annotated[
        str | None, Form(description="generation: comma-separated exact_match, bleu, rouge")
    ] = None,
    regex: Annotated[
        str | None, Form(max_length=200, description="generation: extract the answer first")
    ] = None,
    max_new_tokens: Annotated[int | None, Form(ge=1, le=256)] = None,
    max_rows: Annotated[int, Form(ge=1, le=5000)] = 500,
    apply_chat_template: Annotated[bool, Form()] = False,
) -> EvaluationRead:
    """Queue an lm-evaluation-harness evaluation of the version on an uploaded task file."""
    evaluation = model_evaluations.create_harness_evaluation(
        session=session,
        ctx=ctx,
        version_id=version_id,
        data=harness_tasks.read_upload(file.file),
        filename=file.filename or "tasks.jsonl",
        name=name,
        task_type=task_type or None,
        num_fewshot=num_fewshot,
        metrics=[m for m in (metrics or "").split(",") if m.strip()] or None,
        regex=regex or None,
        max_new_tokens=max_new_tokens,
        max_rows=max_rows,
        apply_chat_template=apply_chat_template,
    )
    return EvaluationRead.model_validate(evaluation)


@router.post(
    "/model-versions/{version_id}/judge-evaluations",
    response_model=EvaluationRead,
    status_code=202,
)
def create_judge_evaluation(
    version_id: int, body: JudgeEvaluationCreate, session: SessionDep, ctx: Workspace
) -> EvaluationRead:
    """Queue the version as a judge of the workspace's arena votes (pairwise, both orders, or
    by rubric); its agreement with the people's votes is the result."""
    evaluation = model_evaluations.create_judge_evaluation(
        session=session,
        ctx=ctx,
        version_id=version_id,
        mode=body.mode,
        rubric=body.rubric,
        max_votes=body.max_votes,
        match=(body.versions[0], body.versions[1]) if body.versions else None,
        prompts=body.prompts,
        max_new_tokens=body.max_new_tokens,
    )
    return EvaluationRead.model_validate(evaluation)


@router.get("/model-versions/{version_id}/evaluations", response_model=list[EvaluationRead])
def read_evaluations(version_id: int, session: SessionDep, ctx: Workspace) -> list[EvaluationRead]:
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    rows = model_evaluations.list_evaluations(session=session, version=version)
    return [EvaluationRead.model_validate(e) for e in rows]


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationRead)
def read_evaluation(evaluation_id: int, session: SessionDep, ctx: Workspace) -> EvaluationRead:
    evaluation = registry_access.get_evaluation_for_member(
        session=session, ctx=ctx, evaluation_id=evaluation_id
    )
    return EvaluationRead.model_validate(evaluation)


@router.get("/evaluations/{evaluation_id}/figures")
def read_evaluation_figures(
    evaluation_id: int, session: SessionDep, ctx: Workspace
) -> dict[str, Any]:
    """The evaluation's figures, apart from its metrics (they are large): a classifier's ROC
    and precision-recall curves with AUC, reliability diagram with ECE and, for two classes,
    the threshold table; `{}` until it succeeds, or for an evaluation that has none."""
    evaluation = registry_access.get_evaluation_for_member(
        session=session, ctx=ctx, evaluation_id=evaluation_id
    )
    return {
        "evaluation_id": evaluation.id,
        "status": evaluation.status,
        "figures": evaluation.figures or {},
    }


@router.get("/models/{model_id}/comparison")
def read_comparison(model_id: int, session: SessionDep, ctx: Workspace) -> dict:
    """Versions side by side: the newest finished evaluation of each, grouped by dataset."""
    return version_compare.comparison(session=session, ctx=ctx, model_id=model_id)
