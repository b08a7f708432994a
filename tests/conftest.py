"""Shared fixtures: a real app on a real database (SQLite and Postgres), personas via the API."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

# Argon2 at production cost takes ~0.2 s a hash; fixtures make many users, so tests use the
# same algorithm at its minimum cost (verification reads the cost from each stored hash).
from argon2 import PasswordHasher  # noqa: E402
from fastapi.testclient import TestClient

import app.core.security as _security  # noqa: E402

# Under CI a skip for a missing Postgres, Redis or docker-compose fails (tests/ci_skips.py);
# under pytest-xdist the long-running test files go out first (tests/xdist_order.py).
pytest_plugins = ["tests.ci_skips", "tests.xdist_order"]

_security._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

# The suite's tiny safetensors GPT-2 models test the transformers lanes (batching, replicas,
# redeploys); the product exports such versions to GGUF for llama.cpp when they load on a CPU,
# which tests/inference/test_llamacpp.py covers with the setting on. Inference processes the
# tests start inherit this.
os.environ.setdefault("LLMIDE_LLAMACPP_EXPORT", "false")

POSTGRES_URL = os.environ.get(
    "LLMIDE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def worker_redis_url(base_url: str, xdist_worker: str | None) -> str:
    """The Redis database this test process may flush: the base URL's own (15 by default), or
    under pytest-xdist one below it per worker (gw0 -> 15, gw1 -> 14, ...), so that parallel
    workers never flush each other's queues."""
    if not xdist_worker:
        return base_url
    parts = urlsplit(base_url)
    own = int(parts.path.strip("/") or 0) - int(xdist_worker.removeprefix("gw"))
    if own < 0:
        raise RuntimeError(f"too many xdist workers for the Redis databases below {base_url}")
    return urlunsplit(parts._replace(path=f"/{own}"))


# Redis database 15 by default (LLMIDE_TEST_REDIS_URL names another); tests only flush that
# one, or under pytest-xdist each worker its own below it.
REDIS_URL = worker_redis_url(
    os.environ.get("LLMIDE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    os.environ.get("PYTEST_XDIST_WORKER"),
)
PASSWORD = "correct-horse-42"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


POSTGRES_UP = _reachable("127.0.0.1", 5432)
REDIS_UP = _reachable("127.0.0.1", 6379)


def configure_environment(
    data_dir: Path, *, database_url: str | None, redis_url: str | None
) -> None:
    """Point every cached piece of configuration at one test installation."""
    os.environ["LLMIDE_DATA_DIR"] = str(data_dir)
    os.environ["LLMIDE_ALLOWED_HOSTS"] = '["127.0.0.1", "localhost", "testserver"]'
    for key, value in (("LLMIDE_DATABASE_URL", database_url), ("LLMIDE_REDIS_URL", redis_url)):
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    from app.core import task_queue
    from app.core.settings import get_settings
    from app.db.session import reset_engine_cache

    get_settings.cache_clear()
    reset_engine_cache()
    task_queue.celery_client.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (migrating once keeps tests fast)."""
    from app.db.migrate import upgrade_to_head

    path = tmp_path_factory.mktemp("template") / "llmide.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> Iterator[str]:
    """A database of this test session's own on the Postgres server, migrated from empty.

    Its own database (not the shared `test` one) lets several test runs share the server.
    """
    if not POSTGRES_UP:
        pytest.skip("Postgres is not running on 127.0.0.1:5432")
    import psycopg

    from app.db.migrate import upgrade_to_head

    name = f"llmide_test_{os.getpid()}"
    admin = psycopg.connect(POSTGRES_URL, autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {name}")
    url = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    upgrade_to_head(url)
    try:
        yield url
    finally:
        from app.db.session import reset_engine_cache

        reset_engine_cache()
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _truncate_postgres(url: str) -> None:
    from sqlalchemy import text

    from app.db.base import Base
    from app.db.session import make_engine

    engine = make_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def installation(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[Path]:
    """A fresh installation: its own data dir and database; Postgres+Redis or the embedded default.

    Tests that take the `backend` fixture run on both; others run on the embedded default.
    """
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("LLMIDE_")}
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if backend == "postgres":
        url = request.getfixturevalue("postgres_migrated")
        if not REDIS_UP:
            pytest.skip("Redis is not running on 127.0.0.1:6379")
        _truncate_postgres(url)
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        configure_environment(data_dir, database_url=url, redis_url=REDIS_URL)
    else:
        shutil.copy(sqlite_template, data_dir / "llmide.db")
        configure_environment(data_dir, database_url=None, redis_url=None)
    yield data_dir
    from app.core.settings import get_settings
    from app.db.session import reset_engine_cache

    reset_engine_cache()
    for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
        del os.environ[key]
    os.environ.update(saved_env)
    get_settings.cache_clear()


@pytest.fixture
def client(installation: Path) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), base_url="http://127.0.0.1") as test_client:
        yield test_client


@dataclass
class Persona:
    """A user with an API token, acting through the real API."""

    email: str
    token: str
    client: TestClient
    workspace_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "X-LLMIDE-Workspace": str(self.workspace_id),
        }

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        return self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def delete(self, url: str, **kw: Any) -> Any:
        return self.client.delete(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def patch(self, url: str, **kw: Any) -> Any:
        return self.client.patch(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def upload(self, filename: str, content: bytes | str, **form: str) -> Any:
        data = content.encode() if isinstance(content, str) else content
        return self.post(
            "/api/v1/datasets", files={"file": (filename, io.BytesIO(data))}, data=form
        )


def _token_for(client: TestClient, email: str, password: str) -> str:
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    created = client.post(
        "/api/v1/tokens",
        json={"name": "tests"},
        headers={"X-CSRF-Token": login.json()["csrf_token"]},
    )
    assert created.status_code == 201, created.text
    client.cookies.clear()
    return str(created.json()["token"])


@dataclass
class Team:
    admin: Persona
    owner: Persona
    editor: Persona
    viewer: Persona
    outsider: Persona


def make_user(client: TestClient, admin: Persona, email: str) -> Persona:
    created = admin.post("/api/v1/users", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    token = _token_for(client, email, PASSWORD)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    return Persona(email, token, client, me["workspace"]["id"])


@pytest.fixture
def team(client: TestClient) -> Team:
    """Admin (first user), an owner with editor and viewer members, and an outsider."""
    setup = client.post("/api/v1/setup", json={"email": "admin@example.com", "password": PASSWORD})
    assert setup.status_code == 201, setup.text
    client.cookies.clear()
    admin_token = _token_for(client, "admin@example.com", PASSWORD)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin_token}"}).json()
    admin = Persona("admin@example.com", admin_token, client, me["workspace"]["id"])
    owner = make_user(client, admin, "owner@example.com")
    editor = make_user(client, admin, "editor@example.com")
    viewer = make_user(client, admin, "viewer@example.com")
    outsider = make_user(client, admin, "outsider@example.com")
    for persona, role in ((editor, "editor"), (viewer, "viewer")):
        added = owner.post("/api/v1/members", json={"email": persona.email, "role": role})
        assert added.status_code == 201, added.text
        persona.workspace_id = owner.workspace_id
    return Team(admin, owner, editor, viewer, outsider)


def text_jsonl(rows: int = 50) -> str:
    sentences = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "the sun is warm today",
        "we like to read books",
        "the bird sings a song",
    ]
    return "".join(json.dumps({"text": sentences[i % len(sentences)]}) + "\n" for i in range(rows))


def chat_jsonl(rows: int = 20) -> str:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"what is {i} plus one?"},
                    {"role": "assistant", "content": f"{i} plus one is {i + 1}."},
                ]
            }
        )
        + "\n"
        for i in range(rows)
    )


def train_in_process(run_id: int) -> str:
    """Run a queued run's training task here, as a worker would, to its end; its outcome
    ("succeeded", "failed", ...)."""
    from workers.tasks import train_run

    return str(train_run.apply(args=[run_id], task_id=f"run-{run_id}").result)


def version_of_run(run_id: int) -> dict[str, Any]:
    """The version a succeeded run registered: its id, serving name and lineage."""
    from app.db.session import session_scope
    from app.services.registry import versions as registry

    with session_scope() as session:
        version = registry.version_for_run(session=session, run_id=run_id)
        assert version is not None
        return {"id": version.id, "name": version.serving_name, "lineage": dict(version.lineage)}


def record_unloadable_checkpoint(installation: Path, run_id: int, step: int) -> None:
    """A checkpoint the database offers but the engine cannot load: a real failure to resume."""
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    key = f"runs/{run_id}/checkpoints/checkpoint-{step}"
    broken = installation / "artifacts" / key
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with session_scope() as session:
        run_execution.record_checkpoint(
            session=session,
            run_id=run_id,
            step=step,
            storage_key=key,
            metrics={},
        )


def resume_then_stop_and_keep(team: Team, run_id: int, *, past_step: int, timeout_s: float) -> None:
    """Run the training task again (a worker resuming the run) and, once it has trained past
    `past_step`, end it with "stop and keep" from the API; the task must end it succeeded."""
    import threading
    import time

    from workers.tasks import train_run

    outcome: list[str] = []
    worker = threading.Thread(
        target=lambda: outcome.append(train_run.apply(args=[run_id], task_id="next").result)
    )
    worker.start()
    deadline = time.monotonic() + timeout_s
    while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < past_step:
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    assert team.editor.post(f"/api/v1/runs/{run_id}/stop").status_code == 200
    worker.join(timeout=timeout_s)
    assert outcome == ["succeeded"]
