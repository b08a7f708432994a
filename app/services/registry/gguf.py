"""Which versions a GGUF export can serve: the architectures our GGUF writer maps to llama.cpp,
checked before a job is queued so that an LSTM or a classifier gets a 400 naming it, not a
failed job. (The writer itself is `workers/engine/gguf.py`, which keeps the same table.)"""

from __future__ import annotations

import json
from pathlib import Path

from app.core.errors import ValidationFailed
from app.core.settings import get_settings
from app.services.registry.base_models import read_gguf_header

# transformers architecture -> llama.cpp architecture; the same as the writer's table.
GGUF_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}


def _refuse(shown: str) -> ValidationFailed:
    return ValidationFailed(
        f"GGUF export runs in llama.cpp, which does not support the architecture {shown} as "
        f"we export it; GGUF export covers {', '.join(GGUF_ARCHITECTURES)} (GPT-2-style "
        "scratch models, Llama-family bases such as SmolLM2, and LoRA adapters on them)",
        param="kind",
    )


def _gguf_architecture(path: Path) -> str:
    """general.architecture of a GGUF file, from the header reader the base-model catalogue uses
    (it skips the vocabulary, so a page load stays quick)."""
    try:
        fields, _ = read_gguf_header(path)
    except Exception as exc:  # a damaged file is the user's problem to know, not a 500
        raise ValidationFailed(
            f"the version's GGUF file {path.name!r} cannot be read ({type(exc).__name__})",
            param="kind",
        ) from exc
    return str(fields.get("general.architecture", "unknown"))


def _adapter_base(folder: Path) -> Path | None:
    """The folder of a LoRA adapter's base when it is in the artifact store, else None.

    The path comes from an uploaded file: nothing outside the store is read on its word (the
    worker's merge checks other bases, such as installed model packages, as deployments do)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    raw = str(config.get("base_model_name_or_path") or "")
    if not raw or "\x00" in raw:
        return None
    root = get_settings().artifact_root.resolve()
    candidate = (root / raw).resolve()  # an absolute raw path replaces root here
    return candidate if candidate.is_relative_to(root) and candidate.is_dir() else None


def check_exportable(folder: Path) -> str:
    """The llama.cpp architecture of a version's folder, or ValidationFailed naming it.

    A LoRA adapter is judged by its base (it is merged before the export); when that base is
    not on this server, the worker's merge decides and its error is the export's.
    """
    if (folder / "adapter_config.json").is_file():
        base = _adapter_base(folder)
        return check_exportable(base) if base is not None else "adapter"
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        arch = _gguf_architecture(ggufs[0])
        if arch not in GGUF_ARCHITECTURES.values():
            raise _refuse(f"{arch!r} (from the GGUF file)")
        return arch
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValidationFailed(
            "the version has no readable config.json, so its architecture is unknown; "
            "GGUF export needs one",
            param="kind",
        ) from exc
    names = [str(a) for a in (config.get("architectures") or [])]
    for name in names:
        if name in GGUF_ARCHITECTURES:
            return GGUF_ARCHITECTURES[name]
    raise _refuse(", ".join(names) or f"of model type {config.get('model_type', 'unknown')!r}")
