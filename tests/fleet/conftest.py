"""A real S3-protocol server for the fleet tests: moto's server mode on loopback.

Why moto (docs/fleet.md): it installs from PyPI with the dev extras (MinIO is a Go binary that
no Python registry ships), starts in-process in a fraction of a second, and speaks S3 over
real HTTP, so boto3's signing, retries, multipart uploads, ranged downloads and checksum
headers all go through the wire exactly as against AWS or MinIO. docker-compose.yml runs MinIO.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings a process needs to use this server's `bucket` as its artifact store."""
        return {
            "LLMIDE_ARTIFACT_URL": f"s3://{bucket}/{prefix}".rstrip("/"),
            "LLMIDE_S3_ENDPOINT_URL": self.endpoint_url,
            "LLMIDE_S3_ACCESS_KEY_ID": "testing",
            "LLMIDE_S3_SECRET_ACCESS_KEY": "testing",
            "LLMIDE_S3_REGION": "us-east-1",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        name = f"llmide-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in a process of its own (not a thread of this one: its objects then
    never count against the memory a test measures here, and it never waits on our GIL)."""
    pytest.importorskip("moto.server")
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    try:
        for _ in range(300):
            try:
                server.client().list_buckets()
                break
            except Exception:
                if process.poll() is not None:
                    raise RuntimeError("moto's S3 server exited; see moto.log") from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@contextmanager
def host(data_dir: Path, env: dict[str, str]) -> Iterator[None]:
    """This test process acting as one host: its own data folder, the given settings."""
    from app.core.settings import get_settings
    from app.db.session import reset_engine_cache
    from app.services import artifact_store

    saved = {k: v for k, v in os.environ.items() if k.startswith("LLMIDE_")}
    for key in list(saved):
        if key not in {"LLMIDE_TEST_REDIS_URL", "LLMIDE_TEST_POSTGRES_URL"}:
            del os.environ[key]
    os.environ.update(env)
    os.environ["LLMIDE_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    artifact_store._store_for.cache_clear()
    reset_engine_cache()
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
            del os.environ[key]
        os.environ.update(saved)
        get_settings.cache_clear()
        artifact_store._store_for.cache_clear()
        reset_engine_cache()
