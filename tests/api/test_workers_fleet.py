"""The workers page and API: a real Celery worker on Redis answers `celery inspect`; the
embedded broker, which cannot broadcast, gets a clear "not available" instead of an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REDIS_UP, Team

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_embedded_broker_says_workers_cannot_be_listed(team: Team) -> None:
    answer = team.viewer.get("/api/v1/workers")
    assert answer.status_code == 200
    body = answer.json()
    assert body["available"] is False and "cannot broadcast" in body["reason"]


@pytest.mark.skipif(not REDIS_UP, reason="Redis is not running")
@pytest.mark.parametrize("backend", ["postgres"])
def test_a_running_worker_is_listed_with_its_queues_and_gpus(
    team: Team, backend: str, tmp_path: Path
) -> None:
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "gpu",
         "-c", "1", "-n", "fleet-test@%h", "-l", "WARNING"],
        cwd=PROJECT_ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            body = team.viewer.get("/api/v1/workers").json()
            if body["workers"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert body["available"], body
        (info,) = [w for w in body["workers"] if w["name"].startswith("fleet-test@")]
        assert info["queues"] == ["gpu"] and info["concurrency"] == 1
        assert info["gpus"] == [] and info["runs"] == []  # a CPU machine, idle
    finally:
        worker.terminate()
        worker.wait(timeout=30)
