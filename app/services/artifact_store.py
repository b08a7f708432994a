"""Where artifacts live for the whole fleet: a local folder (the default) or S3-compatible storage.

One interface, two implementations, chosen by `LLMIDE_ARTIFACT_URL` (unset: the folder under
`LLMIDE_DATA_DIR`; `s3://bucket/prefix`: object storage through boto3). Callers name objects by
key (`runs/7/final/model.safetensors`), never by a path; `artifacts.py` checks every key before
it gets here.

Every transfer streams: uploads read the file in chunks (multipart above
`LLMIDE_ARTIFACT_MULTIPART_THRESHOLD_MB`, in `LLMIDE_ARTIFACT_MULTIPART_CHUNK_MB` parts, so a
20 GB checkpoint never sits in memory), downloads write chunks to a temporary file that is
renamed into place only once whole. Integrity: S3's own per-request checksums guard each part
in transit, and the SHA-256 of the whole file, computed here before the upload and kept as the
object's `sha256` metadata, is checked against every download end to end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from app.core.errors import DomainError, NotFound, ServiceUnavailable
from app.core.settings import Settings, get_settings

HASH_CHUNK = 1024 * 1024
SHA256_META = "sha256"


class ArtifactCorrupt(DomainError):
    """A downloaded object's SHA-256 is not the one recorded at upload: nothing was kept."""

    status_code = 502
    code = "artifact_corrupt"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str | None  # None: stored by something other than this module


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore(Protocol):
    """What the fleet shares: objects by key. Implementations stream and check checksums."""

    url: str
    is_remote: bool

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Store the file at `path` under `key` (replacing what was there)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Store a small object (a manifest, a marker)."""
        ...

    def get_file(self, key: str, dest: Path) -> StoredObject:
        """Write the object to `dest` (atomically: whole or not at all); NotFound if absent,
        ArtifactCorrupt if its content is not what was stored."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """A small object's content (NotFound if absent)."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """The object's content in chunks, for streaming it on (NotFound if absent)."""
        ...

    def head(self, key: str) -> StoredObject | None: ...

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Objects whose key starts with `prefix` (a folder: end it with "/")."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete the object `prefix` and everything under `prefix/`; how many went."""
        ...


class LocalStore:
    """The embedded default: files under one folder (the artifact root), exactly as before."""

    is_remote = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, key: str, path: Path) -> StoredObject:
        dest = self._path(key)
        digest = sha256_file(path)
        if path.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                shutil.copyfileobj(src, out, HASH_CHUNK)
            os.replace(tmp, dest)
        return StoredObject(key, dest.stat().st_size, digest)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest())

    def get_file(self, key: str, dest: Path) -> StoredObject:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"artifact {key!r} is missing from the artifact store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".get-")
        with os.fdopen(fd, "wb") as out, src.open("rb") as handle:
            shutil.copyfileobj(handle, out, HASH_CHUNK)
        os.replace(tmp, dest)
        return StoredObject(key, dest.stat().st_size, None)

    def read_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"artifact {key!r} is missing from the artifact store")
        return src.read_bytes()

    def open(self, key: str) -> Iterator[bytes]:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"artifact {key!r} is missing from the artifact store")

        def chunks() -> Iterator[bytes]:
            with src.open("rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    yield chunk

        return chunks()

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        return StoredObject(key, path.stat().st_size, None) if path.is_file() else None

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self.root / prefix.rstrip("/") if prefix.endswith("/") else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix):
                yield StoredObject(key, path.stat().st_size, None)

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path, ignore_errors=True)
            return count
        if path.exists():
            path.unlink()
            return 1
        return 0


class _HashingWriter:
    """A write-only file for boto3's downloads that hashes what passes through.

    It has no seek(), so s3transfer hands it the parts in order (its non-seekable path) and
    the hash is the file's hash; memory stays bounded by the transfer's queue.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._handle.write(data)


class S3Store:
    """S3-compatible object storage (AWS S3, MinIO, Ceph RGW, R2, ...) through boto3."""

    is_remote = True

    def __init__(self, url: str, settings: Settings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        secret = settings.s3_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                # MinIO and most self-hosted servers want path-style addressing.
                s3={"addressing_style": settings.s3_addressing_style},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        mib = 1024 * 1024
        self._transfer = TransferConfig(
            multipart_threshold=settings.artifact_multipart_threshold_mb * mib,
            multipart_chunksize=settings.artifact_multipart_chunk_mb * mib,
            max_concurrency=settings.artifact_transfer_threads,
            use_threads=settings.artifact_transfer_threads > 1,
        )

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _key(self, name: str) -> str:
        return name[len(self.prefix) :]

    def _unavailable(self, exc: Exception, what: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"the artifact store ({self.url}) could not {what}: {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        )

    @staticmethod
    def _missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}

    def put_file(self, key: str, path: Path) -> StoredObject:
        digest = sha256_file(path)  # first pass: the metadata must go with the first request
        try:
            self._client.upload_file(
                str(path),
                self.bucket,
                self._name(key),
                ExtraArgs={"Metadata": {SHA256_META: digest}},
                Config=self._transfer,
            )
        except Exception as exc:
            raise self._unavailable(exc, f"store {key!r}") from exc
        return StoredObject(key, path.stat().st_size, digest)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._name(key), Body=data, Metadata={SHA256_META: digest}
            )
        except Exception as exc:
            raise self._unavailable(exc, f"store {key!r}") from exc
        return StoredObject(key, len(data), digest)

    def head(self, key: str) -> StoredObject | None:
        try:
            reply = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._missing(exc):
                return None
            raise self._unavailable(exc, f"look up {key!r}") from exc
        return StoredObject(
            key, int(reply["ContentLength"]), (reply.get("Metadata") or {}).get(SHA256_META)
        )

    def get_file(self, key: str, dest: Path) -> StoredObject:
        stored = self.head(key)
        if stored is None:
            raise NotFound(f"artifact {key!r} is missing from the artifact store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".get-")
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _HashingWriter(out)
                self._client.download_fileobj(
                    self.bucket, self._name(key), writer, Config=self._transfer
                )
            got = writer.digest.hexdigest()
            if stored.sha256 is not None and got != stored.sha256:
                raise ArtifactCorrupt(
                    f"artifact {key!r} came back with SHA-256 {got[:12]}…, stored as "
                    f"{stored.sha256[:12]}…; the download was discarded"
                )
            os.replace(tmp, dest)
        except DomainError:
            Path(tmp).unlink(missing_ok=True)
            raise
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            if self._missing(exc):
                raise NotFound(f"artifact {key!r} is missing from the artifact store") from exc
            raise self._unavailable(exc, f"fetch {key!r}") from exc
        return StoredObject(key, writer.size, got)

    def _get_body(self, key: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except Exception as exc:
            if self._missing(exc):
                raise NotFound(f"artifact {key!r} is missing from the artifact store") from exc
            raise self._unavailable(exc, f"fetch {key!r}") from exc

    def read_bytes(self, key: str) -> bytes:
        body = self._get_body(key)
        with body:
            return bytes(body.read())

    def open(self, key: str) -> Iterator[bytes]:
        body = self._get_body(key)

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(HASH_CHUNK)

        return chunks()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._name(prefix)):
                for item in page.get("Contents") or []:
                    yield StoredObject(self._key(item["Key"]), int(item["Size"]), None)
        except Exception as exc:
            raise self._unavailable(exc, f"list {prefix!r}") from exc

    def delete_prefix(self, prefix: str) -> int:
        names = [self._name(prefix)] + [
            self._name(obj.key) for obj in self.list(prefix.rstrip("/") + "/")
        ]
        deleted = 0
        try:
            for start in range(0, len(names), 1000):  # DeleteObjects takes 1,000 at a time
                batch = names[start : start + 1000]
                self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
                )
                deleted += len(batch)
        except Exception as exc:
            raise self._unavailable(exc, f"delete {prefix!r}") from exc
        return deleted - 1  # the prefix itself as an object is usually not there

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (tests and first starts; production makes it)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception:
            self._client.create_bucket(Bucket=self.bucket)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in "/" or empty) of `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"artifact URL {url!r} is not s3://bucket[/prefix]")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


@lru_cache(maxsize=8)
def _store_for(url: str | None, root: Path, endpoint: str | None) -> ArtifactStore:
    if not url:
        return LocalStore(root)
    return S3Store(url, get_settings())


def get_store() -> ArtifactStore:
    """This process's store (one client per configuration, shared by its threads)."""
    settings = get_settings()
    return _store_for(settings.artifact_url, settings.artifact_root, settings.s3_endpoint_url)


def remote_store() -> S3Store | None:
    """The shared object store, or None when artifacts live in the local folder only."""
    store = get_store()
    return store if isinstance(store, S3Store) else None
