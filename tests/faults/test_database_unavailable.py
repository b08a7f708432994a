"""Postgres not there at start: `migrate` and `serve` say so clearly, retry a bounded number of
times, and exit non-zero with one final message: no traceback, no crash loop, no password."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.processes import PROJECT_ROOT, free_port
from tests.faults.support import faults_env

pytestmark = pytest.mark.e2e

ATTEMPTS = 3


@pytest.mark.parametrize("command", [["migrate"], ["serve"]])
def test_an_unreachable_database_ends_start_up_with_a_clear_message_after_bounded_retries(
    tmp_path: Path, command: list[str]
) -> None:
    port = free_port()  # nothing listens here
    env = faults_env(
        tmp_path / "data",
        LLMIDE_DATABASE_URL=f"postgresql://llmide:s3cret-pw@127.0.0.1:{port}/llmide",
        LLMIDE_DB_CONNECT_ATTEMPTS=str(ATTEMPTS),
        LLMIDE_DB_CONNECT_DELAY_S="0.2",
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    output = out.stdout + out.stderr

    assert out.returncode == 1, output
    assert "Traceback" not in output
    assert "s3cret-pw" not in output
    lines = output.strip().splitlines()
    retries = [line for line in lines if "not reachable" in line]
    assert len(retries) == ATTEMPTS, output
    for attempt, line in enumerate(retries, 1):
        assert f"(attempt {attempt}/{ATTEMPTS})" in line, output
        assert f"127.0.0.1:{port}" in line and "refused" in line, output
    assert lines[-1].startswith("error: could not connect to the database"), output
    assert f"after {ATTEMPTS} attempts" in lines[-1] and "LLMIDE_DATABASE_URL" in lines[-1]
    assert len(lines) == ATTEMPTS + 1, "one line per attempt and one final line: " + output
    # Two waits between three attempts, not three: it gives up right after the last one.
    assert took < 15, took
    if command == ["serve"]:
        assert "started worker" not in output, "nothing is started that could crash-loop"
