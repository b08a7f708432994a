"""Real processes and real clients for fault tests: a private Redis, a private Postgres database,
product processes started one by one, and a websocket client that behaves like the run page."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from tests.e2e.processes import PROJECT_ROOT, free_port, server_env
from tests.e2e.test_full_path import PASSWORD, corpus

POSTGRES_ADMIN_URL = os.environ.get(
    "LLMIDE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TERMINAL = {"succeeded", "failed", "cancelled"}
T = TypeVar("T")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    if not reachable("127.0.0.1", 5432):
        pytest.skip("Postgres is not running on 127.0.0.1:5432")


@contextmanager
def postgres_database(label: str) -> Iterator[str]:
    """An empty database of this test's own on the shared server; dropped afterwards."""
    require_postgres()
    import psycopg

    name = f"llmide_faults_{os.getpid()}_{label}"
    admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


class LoggedProcess:
    """A child in its own session (so its whole tree can be killed), output into a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LoggedProcess:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL for the whole process tree, as an OOM killer or a lost machine would."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class RedisServer:
    """A private redis-server on a free port: restartable without touching the machine's own."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = LoggedProcess(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(workdir),
            ],
            dict(os.environ),
            workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process.start()
        wait_for(
            lambda: self.ping(),
            timeout=20,
            what=f"redis-server on port {self.port}",
            log=self.process.log_tail,
        )

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def subscribers(self, channel: str) -> int:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
        finally:
            client.close()

    def kill(self) -> None:
        self.process.kill9()


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, log: Callable[[], str]) -> T:
    """Poll until `predicate` returns something truthy; fail with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{log()}")
        time.sleep(0.2)


def wait_healthy(base_url: str, *, timeout: float, log: Callable[[], str]) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(base_url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=timeout, what=f"{base_url}/healthz", log=log)


def faults_env(data_dir: Path, **extra: str) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return server_env(data_dir, **extra)


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"llmide {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def api_client(env: dict[str, str], base_url: str, email: str = "ops@example.com") -> httpx.Client:
    """A user with an API token (made through the CLI), as an authenticated client."""
    cli(env, "user", "create", email, "--password", PASSWORD)
    token = cli(env, "token", "create", email).strip()
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def launch_run(api: httpx.Client, *, rows: int, **config: Any) -> int:
    dataset = api.post("/api/v1/datasets", files={"file": ("c.jsonl", corpus(rows))})
    assert dataset.status_code == 201, dataset.text
    launched = api.post(
        "/api/v1/runs",
        json={"dataset_id": dataset.json()["id"], "config": {"block_size": 32, **config}},
    )
    assert launched.status_code == 201, launched.text
    return int(launched.json()["id"])


def stored_points(api: httpx.Client, run_id: int) -> set[tuple[int, str]]:
    """Every (step, metric) the database holds for a run: the truth the live view must match."""
    return {
        (p["step"], name)
        for p in api.get(f"/api/v1/runs/{run_id}/metrics").json()
        for name in p["values"]
    }


@dataclass
class Received:
    connection: int
    at: float  # time.monotonic() when the message arrived
    step: int
    name: str


@dataclass
class RunWatcher:
    """The run page's websocket in a thread: connected, and on a drop reconnecting with
    ?after_step= the way static/js/run.js does (its last step minus one, since that step's
    points may have come in two flushes). Records every point with the connection it came on."""

    base_url: str
    token: str
    run_id: int
    timeout: float = 240
    points: list[Received] = field(default_factory=list)
    reconnect_after_steps: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    connected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RunWatcher:
        threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True).start()
        return self

    def last_step(self) -> int:
        return max((p.step for p in self.points), default=-1)

    async def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        url = self.base_url.replace("http://", "ws://") + f"/ws/runs/{self.run_id}"
        try:
            while time.monotonic() < deadline:
                last = self.last_step()
                after = last - 1 if last >= 0 else -1
                try:
                    async with websockets.connect(
                        f"{url}?after_step={after}",
                        additional_headers={"Authorization": f"Bearer {self.token}"},
                        open_timeout=5,
                    ) as ws:
                        self.connections += 1
                        if self.connections > 1:
                            self.reconnect_after_steps.append(after)
                        self.connected.set()
                        if await self._receive(ws, self.connections, deadline):
                            return
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5)
        finally:
            self.done.set()

    async def _receive(self, ws: Any, connection: int, deadline: float) -> bool:
        """True once the run reached a terminal status on this connection."""
        while True:
            raw = await asyncio.wait_for(ws.recv(), timeout=max(1.0, deadline - time.monotonic()))
            message = json.loads(raw)
            now = time.monotonic()
            if message["type"] == "metrics":
                for point in message["points"]:
                    for name in point:
                        if name != "step":
                            self.points.append(Received(connection, now, point["step"], name))
            elif message["type"] == "status":
                self.statuses.append(message["status"])
                if message["status"] in TERMINAL:
                    return True

    def wait_done(self, log: Callable[[], str]) -> None:
        if not self.done.wait(self.timeout + 10):
            raise AssertionError(f"the websocket client never finished\n{log()}")
        if not self.statuses or self.statuses[-1] not in TERMINAL:
            raise AssertionError(
                f"the websocket client stopped before the run ended: statuses {self.statuses}, "
                f"errors {self.errors[-5:]}\n{log()}"
            )

    def counts(self) -> Counter[tuple[int, str]]:
        return Counter((p.step, p.name) for p in self.points)

    def duplicates(self) -> dict[tuple[int, str], int]:
        return {key: n for key, n in self.counts().items() if n > 1}
