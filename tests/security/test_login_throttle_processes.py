"""The sign-in throttle holds across web processes and under concurrency: failures sent to
different processes (as the workers of `llmide serve` receive them) add up, because they are
counted in the database, and a burst of simultaneous guesses is counted before any password is
checked, so no more than the limit are ever checked."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import free_port
from tests.faults.support import LoggedProcess, cli, faults_env, postgres_database, wait_healthy

pytestmark = pytest.mark.e2e

EMAIL = "target@example.com"
PASSWORD = "correct-horse-42"


@pytest.fixture
def two_web_processes(tmp_path: Path, backend: str) -> Iterator[list[str]]:
    """Two separate `llmide serve --web-only --workers 1` on one database (SQLite or Postgres)."""
    with ExitStack() as stack:
        extra = {}
        if backend == "postgres":
            extra["LLMIDE_DATABASE_URL"] = stack.enter_context(postgres_database("throttle"))
        yield from _start_two(faults_env(tmp_path / "data", **extra), tmp_path)


def _start_two(env: dict[str, str], tmp_path: Path) -> Iterator[list[str]]:
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


def burst(urls: list[str], passwords: list[str]) -> list[httpx.Response]:
    """Every sign-in at once (released together by a barrier), spread over the processes."""
    barrier = threading.Barrier(len(passwords))
    answers: list[httpx.Response | None] = [None] * len(passwords)

    def attempt(index: int) -> None:
        barrier.wait()
        answers[index] = sign_in(urls[index % len(urls)], passwords[index])

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(passwords))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def test_a_burst_of_simultaneous_guesses_checks_no_more_passwords_than_the_limit(
    two_web_processes: list[str],
) -> None:
    first = burst(two_web_processes, ["wrong-password-1"] * 24)
    statuses = Counter(answer.status_code for answer in first)
    assert statuses == {401: 5, 429: 19}, [a.text for a in first if a.status_code != 401][:3]
    # The right password hidden in a second burst of wrong ones is refused like the rest.
    second = burst(two_web_processes, ["wrong-password-1"] * 11 + [PASSWORD] + ["x"] * 12)
    assert {answer.status_code for answer in second} == {429}, [a.text for a in second]
