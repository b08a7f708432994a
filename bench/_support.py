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
from typing import IO

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
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the web server at {base} did not start")
            time.sleep(0.25)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
