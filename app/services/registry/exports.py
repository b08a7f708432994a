"""Exports of model versions (ONNX, int8 ONNX, merged LoRA, GGUF): what may be exported and how,
checked before a job is queued, and the version's exports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.celery_config import EXPORT_TASK
from app.core.errors import ValidationFailed
from app.db.models import JobStatus, ModelExport, ModelVersion
from app.services import artifacts
from app.services.registry import access as registry_access
from app.services.registry import gguf as gguf_support
from app.services.registry import jobs as model_jobs
from app.services.registry import kind as model_kind
from app.services.registry.files import is_adapter
from app.services.workspaces.access import WorkspaceContext

EXPORT_KINDS = ("onnx", "merged", "gguf")
# llama.cpp's file types a GGUF export is written in (f16 by our writer, the rest by
# llama.cpp's quantiser); q8_0 when the request names none.
GGUF_QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")
DEFAULT_GGUF_QUANTIZATION = "q8_0"


def create_export(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    kind: str,
    quantize: bool = False,
    quantization: str | None = None,
) -> ModelExport:
    version = registry_access.get_version_for_editor(
        session=session, ctx=ctx, version_id=version_id
    )
    if kind not in EXPORT_KINDS:
        raise ValidationFailed(
            f"export kind must be one of {', '.join(EXPORT_KINDS)}", param="kind"
        )
    folder = artifacts.existing(version.storage_key)
    fmt = (version.lineage or {}).get("format")
    if kind == "merged" and not is_adapter(folder):
        raise ValidationFailed(
            "only a LoRA adapter version (with adapter_config.json) can be merged", param="kind"
        )
    if kind == "onnx" and (fmt == "gguf" or any(folder.glob("*.gguf"))):
        raise ValidationFailed("ONNX export needs safetensors weights, not GGUF", param="kind")
    if kind in ("onnx", "gguf") and model_kind.is_token_classifier_folder(folder):
        # Neither the ONNX quality check (labels per text) nor llama.cpp reads per-token heads.
        raise ValidationFailed(
            f"{kind} export of an entity (token classification) model is not supported yet: "
            "download the version (zip, safetensors) to serve it elsewhere",
            param="kind",
        )
    options: dict[str, Any] = {"quantize": bool(quantize)} if kind == "onnx" else {}
    if kind == "gguf":
        if quantize:
            raise ValidationFailed(
                "quantize is for ONNX exports; a GGUF export takes quantization "
                f"({', '.join(GGUF_QUANTIZATIONS)})",
                param="quantize",
            )
        options = {"quantization": gguf_quantization(quantization)}
        gguf_support.check_exportable(folder)
    elif quantization is not None:
        raise ValidationFailed(
            f"quantization applies to GGUF exports only, not to {kind}", param="quantization"
        )
    export = ModelExport(
        workspace_id=ctx.workspace.id,
        model_version_id=version.id,
        kind=kind,
        options=options,
        status=JobStatus.queued,
        progress=0.0,
        results={},
        created_by_id=ctx.user.id,
    )
    model_jobs.save_and_send(session, export, EXPORT_TASK)
    return export


def gguf_quantization(value: str | None) -> str:
    """The request's GGUF quantisation, checked; a 400 names an unknown one."""
    if value is None:
        return DEFAULT_GGUF_QUANTIZATION
    cleaned = value.strip().lower()
    if cleaned not in GGUF_QUANTIZATIONS:
        raise ValidationFailed(
            f"unknown GGUF quantization {value[:40]!r}; use one of {', '.join(GGUF_QUANTIZATIONS)}",
            param="quantization",
        )
    return cleaned


def list_exports(*, session: Session, version: ModelVersion) -> list[ModelExport]:
    return list(
        session.scalars(
            select(ModelExport)
            .where(ModelExport.model_version_id == version.id)
            .order_by(ModelExport.id.desc())
        )
    )
