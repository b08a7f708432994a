"""The sign-in throttle holds across web processes: failures sent to different processes (as the
workers of `llmide serve` receive them) add up, because they are counted in the database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import free_port
from tests.faults.support import LoggedProcess, cli, faults_env, wait_healthy

pytestmark = pytest.mark.e2e

EMAIL = "target@example.com"
PASSWORD = "correct-horse-42"


@pytest.fixture
def two_web_processes(tmp_path: Path) -> Iterator[list[str]]:
    """Two separate `llmide serve --web-only --workers 1` on one embedded (SQLite) database."""
    env = faults_env(tmp_path / "data")
    cli(env, "migrate")
    cli(env, "user", "create", EMAIL, "--password", PASSWORD)
    processes, urls = [], []
    for name in ("web-a", "web-b"):
        port = str(free_port())
        process = LoggedProcess(
            name,
            [sys.executable, "-m", "app.cli", "serve", "--web-only", "--no-migrate", "--workers=1"],
            {**env, "LLMIDE_PORT": port},
            tmp_path / f"{name}.log",
        ).start()
        processes.append(process)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for process, url in zip(processes, urls, strict=True):
            wait_healthy(url, timeout=60, log=process.log_tail)
        yield urls
    finally:
        for process in processes:
            process.stop()


def sign_in(url: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/session", json={"email": EMAIL, "password": password}, timeout=30
    )


def test_failures_spread_over_two_web_processes_add_up_to_one_limit(
    two_web_processes: list[str],
) -> None:
    first, second = two_web_processes
    # five failures in all, alternating: no process alone has seen five
    for attempt in range(5):
        wrong = sign_in((first, second)[attempt % 2], "wrong-password-1")
        assert wrong.status_code == 401, wrong.text
    for url in (first, second):
        blocked = sign_in(url, PASSWORD)  # even the right password waits now
        assert blocked.status_code == 429, blocked.text
        assert "try again in" in blocked.json()["detail"]
