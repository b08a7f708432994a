"""The artifact store: files under one root, addressed by keys we make, never by request paths.

The root is this process's working copy. With object storage (`LLMIDE_ARTIFACT_URL=s3://…`,
app/services/artifact_store.py) it is only a copy: what one process writes it `publish`es, and
`existing` fetches what another host published (a folder whole, from its manifest, or not at
all). Without it the root is the store itself and publish/fetch do nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Collection
from pathlib import Path

from app.core.errors import NotFound, ValidationFailed
from app.core.settings import get_settings
from app.services.artifact_store import ArtifactCorrupt, remote_store

# Written last when a folder is published: a folder is in the store once its manifest is (a
# reader never fetches a checkpoint half uploaded), and it lists each file's SHA-256.
MANIFEST = ".manifest.json"

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
    """The local path of a stored artifact, fetched from object storage first if another host
    wrote it; NotFound if it is nowhere."""
    path = resolve(key)
    if not path.exists():
        _fetch(key, path)
    return path


def fetched(key: str) -> Path | None:
    """The local path of a small artifact another process may have written (a marker, a
    result), fetched if it is only in the shared store; None if it is nowhere yet."""
    try:
        return existing(key)
    except NotFound:
        return None


def ensure_present(key: str) -> None:
    """NotFound unless the artifact is here or in the shared store (nothing is downloaded)."""
    if resolve(key).exists():
        return
    store = remote_store()
    if store is None or (store.head(f"{key}/{MANIFEST}") is None and store.head(key) is None):
        raise NotFound(f"artifact {key!r} is missing from the artifact store")


def read_member(key: str, name: str) -> bytes:
    """One small file of a stored folder (a model's config.json), without fetching the rest."""
    path = resolve(key)
    if path.is_dir():
        member = path / name
        if not member.is_file():
            raise NotFound(f"artifact {key!r} has no {name}")
        return member.read_bytes()
    store = remote_store()
    if store is None:
        raise NotFound(f"artifact {key!r} is missing from the artifact store")
    return store.read_bytes(f"{key}/{name}")


def publish(key: str) -> None:
    """Copy what this process wrote under `key` (a file or a folder) to the shared store, so
    other hosts can fetch it. A folder's manifest goes last. Nothing to do without one."""
    path = resolve(key)  # the key rules hold whether or not there is a store to copy to
    store = remote_store()
    if store is None:
        return
    if path.is_file():
        store.put_file(key, path)
        return
    if not path.is_dir():
        raise NotFound(f"artifact {key!r} is missing from the artifact store")
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        stored = store.put_file(f"{key}/{rel}", file)
        entries.append({"path": rel, "size": stored.size, "sha256": stored.sha256})
    store.put_bytes(f"{key}/{MANIFEST}", json.dumps({"files": entries}).encode())


def _fetch(key: str, dest: Path) -> None:
    """Download `key` from the shared store into `dest` whole (a folder through a staging
    folder renamed into place), or raise NotFound / ArtifactCorrupt leaving nothing."""
    store = remote_store()
    if store is None:
        raise NotFound(f"artifact {key!r} is missing from the artifact store")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        manifest = json.loads(store.read_bytes(f"{key}/{MANIFEST}"))
    except NotFound:
        store.get_file(key, dest)  # a single file, or NotFound
        return
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".fetch-{dest.name}-"))
    try:
        for entry in manifest["files"]:
            rel = str(entry["path"])
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ArtifactCorrupt(f"artifact {key!r} has a manifest entry {rel!r}")
            got = store.get_file(f"{key}/{rel}", staging / rel)
            if entry.get("sha256") and got.sha256 != entry["sha256"]:
                raise ArtifactCorrupt(f"artifact {key!r}: {rel} is not the file published")
        try:
            os.replace(staging, dest)
        except OSError:
            if not dest.is_dir():  # another process of this host fetched it meanwhile: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def temp_file(suffix: str = "") -> tuple[int, Path]:
    """A temporary file on the same filesystem as the store, so the final move is atomic."""
    tmp_dir = root() / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=suffix)
    return fd, Path(name)


def commit_file(tmp: Path, key: str) -> Path:
    """Move a finished temporary file into place under `key` and publish it to the fleet."""
    dest = resolve(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    publish(key)
    return dest


def run_dir_key(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def delete(key: str) -> None:
    """Delete the artifact here and, with object storage, in the shared store."""
    path = resolve(key)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    store = remote_store()
    if store is not None:
        store.delete_prefix(key)


def key_for(path: Path) -> str:
    """The key of a path inside the store (the worker reports checkpoint folders this way)."""
    base = root().resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        raise ValidationFailed(f"{path} is outside the artifact store")
    return resolved.relative_to(base).as_posix()


class LocalCache:
    """A bounded, least-recently-used local copy of artifacts fetched from the shared store.

    An inference server pulls each version it loads here; beyond `max_bytes` the versions
    used longest ago are deleted (never the one being fetched, nor the `pinned` ones that are
    loaded now). Without object storage the folder is the store itself and nothing is evicted.
    Use times live in a small index beside the artifacts, so a restart keeps the order.
    """

    INDEX = ".cache-index.json"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _index_path(self) -> Path:
        return root() / self.INDEX

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self._index_path().read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, index: dict[str, dict[str, float]]) -> None:
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(self._index_path())

    def get(self, key: str, *, pinned: Collection[str] = ()) -> Path:
        """The local path of `key`, fetched if needed, marked as just used."""
        with self._lock:
            path = existing(key)
            if remote_store() is None:
                return path
            index = self._read()
            size = index.get(key, {}).get("size") or _size_of(path)
            index[key] = {"used": time.time(), "size": size}
            self._evict(index, keep={key, *pinned})
            self._write(index)
            return path

    def _evict(self, index: dict[str, dict[str, float]], keep: set[str]) -> None:
        total = sum(entry["size"] for entry in index.values())
        for key, entry in sorted(index.items(), key=lambda item: item[1]["used"]):
            if total <= self.max_bytes:
                break
            if key in keep:
                continue
            delete_local(key)
            total -= entry["size"]
            del index[key]


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def delete_local(key: str) -> None:
    """Drop this host's copy only (the shared store keeps it)."""
    path = resolve(key)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
