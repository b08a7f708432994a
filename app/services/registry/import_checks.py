"""What an imported model must be before it enters the store, checked on its files: a GGUF
file with GGUF's header, or a Hugging Face folder with config.json and safetensors weights
whose header a loader can read. Pickle checkpoints are refused with a message saying how to
convert them: loading one can run code."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from app.core import safe_json
from app.core.errors import ValidationFailed
from app.services.registry.files import is_pickle

PICKLE_REFUSED = (
    "pickle weights ({names}) are refused: they can run code when loaded. Convert them to "
    "safetensors (model.save_pretrained(dir, safe_serialization=True)) or GGUF and import that"
)
GGUF_MAGIC = b"GGUF"


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


def check_gguf(path: Path) -> None:
    if path.suffix.lower() != ".gguf":
        if is_pickle(path.name):
            raise ValidationFailed(PICKLE_REFUSED.format(names=path.name), param="path")
        raise ValidationFailed(f"{path.name!r} is not a .gguf file or a model folder", param="path")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ValidationFailed(f"{path.name!r} is not a GGUF file (bad header)", param="path")


def check_folder(folder: Path, *, import_root: Path | None) -> None:
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
