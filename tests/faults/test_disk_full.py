"""The disk fills up while a checkpoint is written: the run fails with the reason recorded, and the
checkpoint before it stays intact and loadable.

The fault is real and comes from the kernel: once the first checkpoint is recorded, the test
lowers RLIMIT_FSIZE of the process that trains (resource.prlimit), so its next large write fails
with EFBIG, as a full disk fails it with ENOSPC. The database is Postgres, so only the artifact
writes meet the limit, and the process's output goes into a pipe, which the limit ignores.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import PROJECT_ROOT
from tests.faults.support import (
    LoggedProcess,
    api_client,
    faults_env,
    launch_run,
    postgres_database,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

STEPS = 80  # four checkpoints: steps 20, 40, 60, 80
FILE_LIMIT = 64 * 1024  # far below a checkpoint's weights, above anything else it writes


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with postgres_database("disk") as database_url:
        yield faults_env(tmp_path / "data", LLMIDE_DATABASE_URL=database_url)


def digest(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_a_full_disk_while_checkpointing_fails_the_run_and_keeps_the_previous_checkpoint(
    env: dict[str, str], tmp_path: Path
) -> None:
    base_url = f"http://127.0.0.1:{env['LLMIDE_PORT']}"
    # The web only (its queued task stays in the broker): the training runs in `trainer` below.
    web = LoggedProcess(
        "web", [sys.executable, "-m", "app.cli", "serve", "--web-only"], env, tmp_path / "web.log"
    ).start()
    output: list[str] = []
    trainer: subprocess.Popen[str] | None = None

    def log() -> str:
        return f"--- trainer ---\n{''.join(output)[-5000:]}\n--- web ---\n{web.log_tail(2000)}"

    try:
        wait_healthy(base_url, timeout=60, log=log)
        api = api_client(env, base_url)
        run_id = launch_run(api, rows=600, max_steps=STEPS)
        trainer = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.task_in_process", str(run_id)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert trainer.stdout is not None
        reader = threading.Thread(target=lambda: output.extend(trainer.stdout), daemon=True)
        reader.start()

        first = wait_for(
            lambda: api.get(f"/api/v1/runs/{run_id}/checkpoints").json(),
            timeout=180,
            what="the first checkpoint",
            log=log,
        )
        # The disk is "full" from here on.
        _, hard = resource.prlimit(trainer.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(trainer.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, hard))
        assert [c["step"] for c in first] == [20]
        checkpoints_dir = Path(env["LLMIDE_DATA_DIR"]) / "artifacts" / "runs" / str(run_id)
        checkpoints_dir /= "checkpoints"
        kept = checkpoints_dir / "checkpoint-20"
        before = digest(kept)

        try:
            trainer.wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise AssertionError("the training process did not end\n" + log()) from None
        reader.join(timeout=10)
        assert trainer.returncode == 0, log()
        assert "task result: failed" in "".join(output), log()

        run = api.get(f"/api/v1/runs/{run_id}").json()
        assert run["status"] == "failed", (run, log())
        assert "could not write the checkpoint at step 40" in run["error"], run["error"]
        assert "File too large" in run["error"], run["error"]
        assert run["step"] >= 40
        events = [e["message"] for e in api.get(f"/api/v1/runs/{run_id}/events").json()]
        assert any(m.startswith("run failed: ") and "step 40" in m for m in events), events
        assert [c["step"] for c in api.get(f"/api/v1/runs/{run_id}/checkpoints").json()] == [20]
        assert api.get("/api/v1/models").json() == [], "a failed run registers nothing"

        # Nothing half-written looks like a checkpoint; the one before is untouched and loads.
        assert sorted(p.name for p in checkpoints_dir.iterdir()) == ["checkpoint-20"]
        assert not (checkpoints_dir.parent / "final").exists()
        assert digest(kept) == before
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(kept)
        tokenizer = AutoTokenizer.from_pretrained(kept)
        assert model.num_parameters() > 0 and len(tokenizer) > 256
        api.close()
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        web.stop()
