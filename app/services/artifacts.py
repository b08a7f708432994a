"""The artifact store: files under one root, addressed by keys we make, never by request paths."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from app.core.errors import NotFound, ValidationFailed
from app.core.settings import get_settings

# Keys are made by this module only; the pattern is a second line of defence.
_KEY_RE = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.-]+)*$")


def root() -> Path:
    path = get_settings().artifact_root
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(key: str) -> Path:
    """Turn a stored key into a path, refusing anything that would leave the artifact root."""
    if not _KEY_RE.match(key) or ".." in key.split("/"):
        raise ValidationFailed(f"invalid artifact key {key!r}")
    base = root().resolve()
    path = (base / key).resolve()
    if not path.is_relative_to(base):
        raise ValidationFailed(f"artifact key {key!r} points outside the artifact store")
    return path


def existing(key: str) -> Path:
    path = resolve(key)
    if not path.exists():
        raise NotFound(f"artifact {key!r} is missing from the artifact store")
    return path


def temp_file(suffix: str = "") -> tuple[int, Path]:
    """A temporary file on the same filesystem as the store, so the final move is atomic."""
    tmp_dir = root() / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=suffix)
    return fd, Path(name)


def commit_file(tmp: Path, key: str) -> Path:
    dest = resolve(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def run_dir_key(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def delete(key: str) -> None:
    path = resolve(key)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def key_for(path: Path) -> str:
    """The key of a path inside the store (the worker reports checkpoint folders this way)."""
    base = root().resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        raise ValidationFailed(f"{path} is outside the artifact store")
    return resolved.relative_to(base).as_posix()
