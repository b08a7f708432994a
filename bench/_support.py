"""What every benchmark needs: free ports, a fresh Postgres database, percentiles, a web server.

Not a benchmark itself (bench/run_all.py skips files starting with "_").
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_postgres_url(name: str) -> str | None:
    """An empty database `name` on the local Postgres, or None when Postgres is not running."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    except Exception:
        return None


def percentile(values: list[float], pct: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def wait_healthy(base: str, process: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    """Wait until `base`/healthz answers 200; exit the bench if `process` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} at {base} did not start")
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def web_server(
    env: dict[str, str], *extra_args: str, log: IO[bytes] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`llmide serve --web-only` on env's LLMIDE_PORT, healthy on entry, stopped on exit."""
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--web-only", "--no-migrate", *extra_args],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{env['LLMIDE_PORT']}"
    try:
        wait_healthy(base, server, "the web server")
        yield server
    finally:
        stop_process(server)


@contextmanager
def bench_user() -> Iterator[tuple[Any, str, Any]]:
    """Migrate the configured database and create the bench user with an API token; yields
    (session, token secret, workspace context) inside one session scope, for the caller's
    own records. The caller sets LLMIDE_* in os.environ first: the settings are read afresh.
    """
    from app.core.settings import get_settings
    from app.db.migrate import upgrade_to_head
    from app.db.session import reset_engine_cache, session_scope
    from app.services.workspaces import access as workspace_access
    from app.services.workspaces import tokens, users

    get_settings.cache_clear()
    reset_engine_cache()
    get_settings().ensure_dirs()
    upgrade_to_head(get_settings().sqlalchemy_url)
    with session_scope() as session:
        user = users.create_user(
            session=session, email="bench@example.com", password="bench-pass-123"
        )
        _, secret = tokens.create_token(session=session, user=user, name="bench")
        ctx = workspace_access.context_for(session=session, user=user, workspace_ref=None)
        yield session, secret, ctx


def seed_bench_run(
    *, status: str, filename: str = "bench.jsonl", size_bytes: int = 1
) -> tuple[str, int]:
    """Migrate the configured database and create a user (with an API token), a dataset record
    and one run in `status`, through the services where they exist; (token secret, run id).

    The caller sets LLMIDE_* in os.environ first: the settings are read afresh here.
    """
    from app.db.models import Dataset, Run

    with bench_user() as (session, secret, ctx):
        dataset = Dataset(
            workspace_id=ctx.workspace.id,
            name="bench",
            filename=filename,
            format="text",
            sha256="0" * 64,
            size_bytes=size_bytes,
            num_rows=1,
            storage_key="datasets/bench.jsonl",
        )
        session.add(dataset)
        session.flush()
        run = Run(
            workspace_id=ctx.workspace.id,
            name="bench",
            base_model="scratch-tiny",
            dataset_id=dataset.id,
            config={},
            status=status,
        )
        session.add(run)
        session.commit()
        return secret, int(run.id)
