"""Starts the real product (`llmide serve`: web, Celery worker, inference) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def cli(self, *args: str) -> str:
        """Run `llmide ...` against the same installation; returns stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMIDE_")}
    env.update(
        LLMIDE_DATA_DIR=str(data_dir),
        LLMIDE_PORT=str(free_port()),
        LLMIDE_INFERENCE_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@contextmanager
def running_server(data_dir: Path, **extra_env: str) -> Iterator[Server]:
    env = server_env(data_dir, **extra_env)
    log_path = data_dir.parent / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{env['LLMIDE_PORT']}", env, process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + server.log_tail())
            time.sleep(0.5)
        yield server
    finally:
        # Ctrl-C, as a person would: the supervisor must stop every child.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # stacks into the log, for the failure report
            time.sleep(1)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
