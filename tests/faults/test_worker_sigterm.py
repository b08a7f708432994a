"""A real Celery worker told to shut down (SIGTERM, as `docker stop` or the supervisor does)
while training: its pool process saves a checkpoint, hands the run back and the worker exits
promptly instead of waiting for the run to end or losing the work since the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REDIS_UP, Team, text_jsonl

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not REDIS_UP, reason="Redis is not running")
@pytest.mark.parametrize("backend", ["postgres"])
def test_worker_sigterm_checkpoints_the_running_run_and_requeues_it(
    team: Team, backend: str, tmp_path: Path
) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    log_path = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "gpu",
         "-c", "1", "-n", "sigterm-test@%h", "-l", "INFO"],
        cwd=PROJECT_ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        run_id = team.editor.post(
            "/api/v1/runs",
            json={"dataset_id": dataset_id, "config": {"max_steps": 400, "block_size": 16}},
        ).json()["id"]
        deadline = time.monotonic() + 150
        while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < 3:
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-4000:]
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "interrupted", (run, log_path.read_text()[-4000:])
    assert 3 <= run["step"] < 400
    checkpoints = [c["step"] for c in team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()]
    assert run["step"] in checkpoints
    import redis

    from tests.conftest import REDIS_URL

    assert redis.Redis.from_url(REDIS_URL).llen("gpu") == 1, "the run is queued for the next worker"
