"""Registering models that have no run: a Hugging Face folder or a GGUF file, by path or upload.

Everything imported is copied into the artifact store (imports/<token>/), so a version never
changes under its content hash and the inference server loads it from its own allow-listed root.
Only safetensors and GGUF weights are accepted; pickle checkpoints are refused with a message.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from app.core import safe_json
from app.core.errors import ValidationFailed
from app.core.settings import get_settings
from app.db.models import ModelStage, ModelVersion, Role
from app.services import artifacts
from app.services.registry import registration
from app.services.registry.files import model_files
from app.services.registry.import_checks import (
    check_folder,
    check_gguf,
    check_upload_name,
)
from app.services.registry.zip_extract import extract_zip
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext


def import_from_path(
    *, session: Session, ctx: WorkspaceContext, name: str, path: str
) -> ModelVersion:
    """Import a folder or .gguf file from under LLMIDE_IMPORT_DIR (nothing outside it)."""
    ctx.require(Role.editor)
    name = registration.validate_model_name(name)
    source = resolve_import_path(path)
    staged = _staging_dir()
    try:
        if source.is_file():
            check_gguf(source)
            shutil.copyfile(source, staged / source.name)
        else:
            check_folder(source, import_root=_import_root())
            for file in model_files(source):
                shutil.copyfile(file, staged / file.name)
        return _register(session, ctx, name, staged, f"path:{path}")
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _import_root() -> Path:
    root = get_settings().import_dir
    if root is None:
        raise ValidationFailed(
            "imports by path are turned off on this server; an administrator sets "
            "LLMIDE_IMPORT_DIR to the folder models may be imported from (or upload a zip/GGUF)",
            param="path",
        )
    return root.expanduser().resolve()


def resolve_import_path(raw: str) -> Path:
    """The checked, fully resolved path: inside the import folder, symlinks followed."""
    root = _import_root()
    if not raw or "\x00" in raw or len(raw) > 1024:
        raise ValidationFailed("the path is empty or malformed", param="path")
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ValidationFailed(
            f"{raw!r} is outside the import folder; only models under it can be imported",
            param="path",
        )
    if not resolved.exists():
        raise ValidationFailed(f"{raw!r} does not exist in the import folder", param="path")
    if not (resolved.is_file() or resolved.is_dir()):
        # A pipe would block the copy forever; a device or socket is no model either.
        raise ValidationFailed(
            f"{raw!r} is not a regular file or a folder (a pipe, socket or device cannot be "
            "imported)",
            param="path",
        )
    return resolved


def import_received(
    *, session: Session, ctx: WorkspaceContext, name: str, path: Path, filename: str
) -> ModelVersion:
    """Import a file already in the artifact store (a completed chunked upload): a .gguf is
    moved, not copied; a .zip is extracted. Checked exactly as a one-request upload."""
    ctx.require(Role.editor)
    name = registration.validate_model_name(name)
    filename = check_upload_name(filename)
    staged = _staging_dir()
    try:
        _stage_upload(path, filename, staged)
        return _register(session, ctx, name, staged, f"upload:{filename}")
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def import_from_upload(
    *,
    session: Session,
    ctx: WorkspaceContext,
    name: str,
    stream: IO[bytes],
    filename: str | None,
) -> ModelVersion:
    """Import an uploaded .zip of a model folder or a .gguf file."""
    ctx.require(Role.editor)
    name = registration.validate_model_name(name)
    filename = check_upload_name(filename or "")
    limit = get_settings().max_upload_bytes
    fd, tmp = artifacts.temp_file(suffix=".upload")
    staged = _staging_dir()
    try:
        size = 0
        with os.fdopen(fd, "wb") as sink:
            while chunk := stream.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise ValidationFailed(f"the upload is larger than {limit} bytes", param="file")
                sink.write(chunk)
        _stage_upload(tmp, filename, staged)
        return _register(session, ctx, name, staged, f"upload:{filename}")
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(staged, ignore_errors=True)


def _stage_upload(path: Path, filename: str, staged: Path) -> None:
    """Put an uploaded file into the staging folder and check it: a .gguf is moved (not
    copied) and must be a real GGUF; anything else is a .zip of a model folder, extracted
    safely and checked like a folder import."""
    if filename.lower().endswith(".gguf"):
        target = staged / (_safe_name(filename) or "model.gguf")
        os.replace(path, target)
        check_gguf(target)
    else:
        extract_zip(path, staged)
        check_folder(staged, import_root=None)


def _safe_name(filename: str) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)
    return stem.lstrip(".")[:100]


def _staging_dir() -> Path:
    path = artifacts.root() / "tmp" / f"import-{secrets.token_hex(8)}"
    path.mkdir(parents=True)
    return path


def _register(
    session: Session, ctx: WorkspaceContext, name: str, staged: Path, origin: str
) -> ModelVersion:
    """Move the checked files into the store and record the version (no run)."""
    model = registration.get_or_create_model(session=session, ctx=ctx, name=name)
    number = registration.next_version_number(session=session, model=model)
    key = f"imports/{secrets.token_hex(12)}"
    sha256, size = registration.content_fingerprint(staged)
    files = sorted(p.name for p in staged.iterdir())
    gguf = next((f for f in files if f.endswith(".gguf")), None)
    config: dict[str, Any] = {}
    config_path = staged / (
        "adapter_config.json" if "adapter_config.json" in files else "config.json"
    )
    if config_path.is_file():
        try:
            config = safe_json.loads(config_path.read_bytes())
        except ValueError as exc:  # not JSON, not UTF-8, or nested absurdly deep
            raise ValidationFailed(f"{config_path.name} is not valid JSON", param="file") from exc
        if not isinstance(config, dict):
            raise ValidationFailed(f"{config_path.name} is not a JSON object", param="file")
    fmt = "gguf" if gguf else ("peft-adapter" if "adapter_config.json" in files else "safetensors")
    base = config.get("base_model_name_or_path") or config.get("model_type") or gguf or "unknown"
    dest = artifacts.resolve(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    staged.mkdir()  # the caller's cleanup expects a folder
    artifacts.publish(key)  # for inference servers and workers on other hosts
    version = ModelVersion(
        workspace_id=ctx.workspace.id,
        registered_model_id=model.id,
        version=number,
        serving_name=f"{name}:v{number}",
        run_id=None,
        checkpoint_id=None,
        storage_key=key,
        source="import",
        stage=ModelStage.none,
        tags=[],
        content_sha256=sha256,
        size_bytes=size,
        code_version=registration.code_version(),
        created_by_id=ctx.user.id,
        lineage={
            "source": "import",
            "imported_from": origin[:300],
            "format": fmt,
            "base_model": str(base)[:200],
            "files": files,
        },
    )
    session.add(version)
    session.flush()
    audit.record(
        session=session,
        actor=ctx,
        action="model.import",
        target_type="model_version",
        target_id=version.id,
        detail={"serving_name": version.serving_name, "format": fmt},
    )
    return version
