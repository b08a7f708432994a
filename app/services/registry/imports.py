"""Registering models that have no run: a Hugging Face folder or a GGUF file, by path or upload.

Everything imported is copied into the artifact store (imports/<token>/), so a version never
changes under its content hash and the inference server loads it from its own allow-listed root.
Only safetensors and GGUF weights are accepted; pickle checkpoints are refused with a message.
"""

from __future__ import annotations

import lzma
import os
import secrets
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy.orm import Session

from app.core import safe_json
from app.core.errors import ValidationFailed
from app.core.settings import get_settings
from app.db.models import ModelStage, ModelVersion, Role
from app.services import artifacts, audit
from app.services.registry import registration
from app.services.registry.files import is_model_file, is_pickle, model_files
from app.services.workspaces import WorkspaceContext

PICKLE_REFUSED = (
    "pickle weights ({names}) are refused: they can run code when loaded. Convert them to "
    "safetensors (model.save_pretrained(dir, safe_serialization=True)) or GGUF and import that"
)
GGUF_MAGIC = b"GGUF"


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
            _check_gguf(source)
            shutil.copyfile(source, staged / source.name)
        else:
            _check_folder(source, import_root=_import_root())
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


def _check_gguf(path: Path) -> None:
    if path.suffix.lower() != ".gguf":
        if is_pickle(path.name):
            raise ValidationFailed(PICKLE_REFUSED.format(names=path.name), param="path")
        raise ValidationFailed(f"{path.name!r} is not a .gguf file or a model folder", param="path")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ValidationFailed(f"{path.name!r} is not a GGUF file (bad header)", param="path")


def _check_folder(folder: Path, *, import_root: Path | None) -> None:
    files = [p for p in folder.iterdir() if p.is_file()]
    if import_root is not None:
        for file in files:
            if not file.resolve().is_relative_to(import_root):
                raise ValidationFailed(
                    f"{file.name!r} links to a file outside the import folder", param="path"
                )
    names = [p.name for p in files]
    weights = [n for n in names if n.endswith(".safetensors") or n.endswith(".gguf")]
    if not weights:
        pickles = [n for n in names if is_pickle(n)]
        if pickles:
            raise ValidationFailed(PICKLE_REFUSED.format(names=", ".join(pickles)), param="path")
        raise ValidationFailed(
            "no safetensors or GGUF weights found; a model folder needs model.safetensors "
            "(or adapter_model.safetensors) and config.json",
            param="path",
        )
    for file in files:
        if file.name.endswith(".safetensors"):
            _check_safetensors(file, param="path" if import_root is not None else "file")
    ggufs = [n for n in names if n.endswith(".gguf")]
    if len(ggufs) > 1:
        raise ValidationFailed("the folder holds several GGUF files; import one", param="path")
    if not ggufs and not ({"config.json", "adapter_config.json"} & set(names)):
        raise ValidationFailed(
            "a Hugging Face folder needs config.json (or adapter_config.json)", param="path"
        )


# safetensors' own limit on the JSON header that lists the tensors.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _check_safetensors(path: Path, *, param: str) -> None:
    """Refuse weights no loader can read, now rather than as a failed deployment later: the
    header must be a JSON object of tensors whose data lies inside the file."""
    size = path.stat().st_size
    problem = None
    with path.open("rb") as handle:
        raw = handle.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if length < 2 or length > min(_MAX_SAFETENSORS_HEADER, size - 8):
            problem = "its header length is wrong (truncated or not safetensors)"
        else:
            try:
                header = safe_json.loads(handle.read(length))
            except ValueError:
                header = None
            if not isinstance(header, dict):
                problem = "its header is not a JSON object"
            else:
                for name, tensor in header.items():
                    if name == "__metadata__":
                        continue
                    offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
                    if (
                        not isinstance(offsets, list)
                        or len(offsets) != 2
                        or not all(isinstance(o, int) for o in offsets)
                        or not 0 <= offsets[0] <= offsets[1] <= size - 8 - length
                    ):
                        problem = f"tensor {str(name)[:100]!r} lies outside the file (truncated?)"
                        break
    if problem is not None:
        raise ValidationFailed(
            f"{path.name} is not a valid safetensors file: {problem}", param=param
        )


def check_upload_name(filename: str) -> str:
    """The uploaded file's name if it is an importable type (.zip or .gguf), else a 400."""
    filename = os.path.basename((filename or "").replace("\\", "/"))
    lower = filename.lower()
    if is_pickle(lower):
        raise ValidationFailed(PICKLE_REFUSED.format(names=filename), param="file")
    if not lower.endswith((".zip", ".gguf")):
        raise ValidationFailed(
            "upload a .zip of a Hugging Face model folder or a .gguf file", param="file"
        )
    return filename


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
    filename = os.path.basename((filename or "").replace("\\", "/"))
    lower = filename.lower()
    if is_pickle(lower):
        raise ValidationFailed(PICKLE_REFUSED.format(names=filename), param="file")
    if not lower.endswith((".zip", ".gguf")):
        raise ValidationFailed(
            "upload a .zip of a Hugging Face model folder or a .gguf file", param="file"
        )
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
        _check_gguf(target)
    else:
        _extract_zip(path, staged)
        _check_folder(staged, import_root=None)


def _safe_name(filename: str) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)
    return stem.lstrip(".")[:100]


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract a model folder, refusing the whole archive on any unsafe or pickle entry.

    Entries may sit at the top or under one folder; `..`, absolute paths, backslashes and
    symlinks are refused, and only model files are written (flat, by their own name).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
        raise ValidationFailed("the upload is not a valid zip archive", param="file") from exc
    with zf:
        entries = [i for i in zf.infolist() if not i.is_dir()]
        budget = 10 * get_settings().max_upload_bytes
        pickles: list[str] = []
        for info in entries:
            raw = info.filename
            parts = PurePosixPath(raw).parts
            if (
                raw.startswith("/")
                or "\\" in raw
                or ".." in parts
                or (len(raw) > 1 and raw[1] == ":")
                or "\x00" in raw
            ):
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} has an unsafe path (absolute or with '..')",
                    param="file",
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} is a symbolic link; links are refused", param="file"
                )
            if len(parts) > 2:
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} is nested too deep; zip one model folder",
                    param="file",
                )
            if is_pickle(parts[-1]):
                pickles.append(parts[-1])
            budget -= info.file_size
            if budget < 0:
                raise ValidationFailed("the archive unpacks to more than allowed", param="file")
        if pickles:
            raise ValidationFailed(PICKLE_REFUSED.format(names=", ".join(pickles)), param="file")
        seen: set[str] = set()
        budget = 10 * get_settings().max_upload_bytes
        for info in entries:
            base = PurePosixPath(info.filename).name
            if not is_model_file(base):
                continue
            if base in seen:
                raise ValidationFailed(f"the archive holds {base!r} twice", param="file")
            seen.add(base)
            budget -= _extract_entry(zf, info, dest / base, budget)


# What reading a damaged or hostile entry raises: a bad CRC, a local header that names another
# file than the central directory, sizes that lie (the data ends early or runs on), corrupt
# compressed data, an encrypted entry (RuntimeError) or an unknown compression method.
_DAMAGED_ENTRY = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copy one entry to `target`, counting the bytes really produced (not the declared size);
    a damaged entry refuses the whole upload with a 400 naming it. Returns the bytes written."""
    name = info.filename[:200]
    written = 0
    with target.open("wb") as sink:
        try:
            source = zf.open(info)
        except _DAMAGED_ENTRY as exc:
            raise _damaged(name, exc) from None
        with source:
            while True:
                try:
                    chunk = source.read(1024 * 1024)
                except _DAMAGED_ENTRY as exc:
                    raise _damaged(name, exc) from None
                if not chunk:
                    return written
                written += len(chunk)
                if written > budget:
                    raise ValidationFailed("the archive unpacks to more than allowed", param="file")
                sink.write(chunk)


def _damaged(name: str, exc: BaseException) -> ValidationFailed:
    reason = str(exc)[:200] or type(exc).__name__
    return ValidationFailed(
        f"the zip archive is damaged: entry {name!r} cannot be read ({reason})", param="file"
    )


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
