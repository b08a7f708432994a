"""The installation pieces: migrations from empty, the compose file, the CLI, settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_UP, POSTGRES_URL

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(PROJECT_ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid_and_has_every_service() -> None:
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "pw",
        "LLMIDE_SECRET_KEY": "k" * 40,
        "MINIO_ROOT_PASSWORD": "minio-secret",
    }
    result = _compose_config(env)
    assert result.returncode == 0, result.stderr
    services = ("web:", "worker-gpu:", "worker-cpu:", "inference:", "redis:", "postgres:", "minio:")
    for service in services:
        assert f"  {service}" in result.stdout
    assert "driver: nvidia" in result.stdout
    # Artifacts go to the MinIO service (docs/fleet.md), with its password, not a default one.
    assert "LLMIDE_ARTIFACT_URL: s3://llmide/artifacts" in result.stdout
    assert "LLMIDE_S3_ENDPOINT_URL: http://minio:9000" in result.stdout
    assert "LLMIDE_S3_SECRET_ACCESS_KEY: minio-secret" in result.stdout


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_refuses_to_start_without_the_object_store_password() -> None:
    env = {**os.environ, "POSTGRES_PASSWORD": "pw", "LLMIDE_SECRET_KEY": "k" * 40}
    env.pop("MINIO_ROOT_PASSWORD", None)
    result = _compose_config(env)
    assert result.returncode != 0
    assert "MINIO_ROOT_PASSWORD" in result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_refuses_to_start_without_secrets() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "LLMIDE_SECRET_KEY")
    }
    result = _compose_config(env)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_migrations_run_from_empty_on_sqlite_and_match_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db.base import Base
    from app.db.migrate import upgrade_to_head
    from app.db.session import make_engine

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade_to_head(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.mark.skipif(not POSTGRES_UP, reason="Postgres is not running")
def test_migrations_match_the_models_on_postgres(postgres_migrated: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db.base import Base
    from app.db.session import make_engine

    engine = make_engine(postgres_migrated)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], POSTGRES_URL


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=120,
    )


def test_cli_migrates_creates_a_user_and_prints_only_the_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMIDE_")}
    env["LLMIDE_DATA_DIR"] = str(tmp_path / "data")
    assert _cli(env, "migrate").returncode == 0
    created = _cli(
        env, "user", "create", "ops@example.com", "--password", "s3cret-enough", "--admin"
    )
    assert created.returncode == 0, created.stderr
    token = _cli(env, "token", "create", "ops@example.com", "--name", "ci")
    assert token.returncode == 0
    assert token.stdout.startswith("llmide_") and token.stdout.count("\n") == 1
    weak = _cli(env, "user", "create", "weak@example.com", "--password", "short")
    assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
    common = _cli(env, "user", "create", "weak@example.com", "--password", "password12")
    assert common.returncode == 1 and "too easy to guess" in common.stderr, common.stderr
    unknown = _cli(env, "token", "create", "nobody@example.com")
    assert unknown.returncode == 1 and "no user" in unknown.stderr


def test_a_fresh_install_generates_its_own_secret_key(tmp_path: Path) -> None:
    from app.core.settings import Settings

    first = Settings(data_dir=tmp_path).resolved_secret_key()
    assert len(first) >= 32 and first == Settings(data_dir=tmp_path).resolved_secret_key()
    assert first != Settings(data_dir=tmp_path / "other").resolved_secret_key()
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="at least 32"):
        Settings(data_dir=tmp_path, secret_key="short").resolved_secret_key()


def test_settings_turn_postgres_urls_into_psycopg3_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.settings import Settings

    monkeypatch.delenv("LLMIDE_ALLOWED_HOSTS", raising=False)
    settings = Settings(database_url="postgres://u@h/db", redis_url="redis://h:6379/0")
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert settings.broker_url == "redis://h:6379/0"
    assert Settings(data_dir=Path("/tmp/x")).broker_url.startswith("sqla+sqlite:////tmp/x/")
    assert json.loads(json.dumps(Settings().allowed_hosts)) == ["127.0.0.1", "localhost", "[::1]"]


def test_each_xdist_worker_flushes_a_redis_database_of_its_own() -> None:
    from tests.conftest import worker_redis_url

    base = "redis://127.0.0.1:6379/12"
    assert worker_redis_url(base, None) == base  # not under xdist: the named database
    assert worker_redis_url(base, "gw0") == base
    assert worker_redis_url(base, "gw3") == "redis://127.0.0.1:6379/9"
    with pytest.raises(RuntimeError, match="too many xdist workers"):
        worker_redis_url("redis://127.0.0.1:6379/1", "gw2")
