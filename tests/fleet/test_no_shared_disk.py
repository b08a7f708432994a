"""Workers and inference servers with no shared disk: each host has its own data folder; the
database and the S3-compatible store are all they share.

The web takes the upload, worker host A trains and is killed (SIGKILL) after a checkpoint,
worker host B resumes the run from that checkpoint, which it has never seen on its own disk,
and ends with the losses of a run nobody interrupted; an inference server on a fourth data
folder pulls the registered version into its cache and loads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Team, text_jsonl
from tests.fleet.conftest import S3Server, host

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e  # three training processes: about a minute and a half
STEPS = 12
KILL_AT = 8
CONFIG = {"max_steps": STEPS, "block_size": 16, "batch_size": 4, "save_steps": 4, "eval_steps": 100}


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The web of this test (the `team` fixture's app) keeps its artifacts in the bucket too."""
    env = s3_server.env(s3_server.new_bucket(), "llmide")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from app.core.settings import get_settings
    from app.services import artifact_store

    get_settings.cache_clear()
    artifact_store._store_for.cache_clear()
    yield env
    get_settings.cache_clear()
    artifact_store._store_for.cache_clear()


def run_worker_host(
    data_dir: Path, database_url: str, s3_env: dict[str, str], run_id: int, kill_at: int | None
) -> subprocess.CompletedProcess[str]:
    """A worker on "another machine": its own data folder, nothing else of the web's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMIDE_")}
    env |= s3_env | {
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_DATABASE_URL": database_url,
        "LLMIDE_RUN_STALE_AFTER_S": "2",
    }
    argv = [sys.executable, "-m", "tests.fleet.host_worker", str(run_id)]
    return subprocess.run(
        argv + ([str(kill_at)] if kill_at is not None else []),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def train_losses(team: Team, run_id: int) -> dict[int, float]:
    points = team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
    return {p["step"]: p["values"]["train_loss"] for p in points if "train_loss" in p["values"]}


def test_a_run_killed_on_host_a_resumes_exactly_on_host_b_and_serves_from_a_third(
    s3_env: dict[str, str], team: Team, installation: Path, tmp_path: Path
) -> None:
    from app.db.session import session_scope
    from app.services.registry import versions as registry
    from app.services.serving import targets

    database_url = f"sqlite:///{installation / 'llmide.db'}"
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    launched = [
        team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG})
        for _ in range(2)
    ]
    assert all(r.status_code == 201 for r in launched), [r.text for r in launched]
    killed_id, straight_id = (int(r.json()["id"]) for r in launched)
    host_a, host_b, host_c = (tmp_path / name for name in ("host-a", "host-b", "host-c"))

    # Host A: killed right after its step-8 checkpoint was stored and recorded.
    a = run_worker_host(host_a, database_url, s3_env, killed_id, KILL_AT)
    assert a.returncode == -signal.SIGKILL, a.stdout[-3000:] + a.stderr[-3000:]
    assert team.viewer.get(f"/api/v1/runs/{killed_id}").json()["status"] == "running"

    # Host B has never seen the run: no dataset, no checkpoint on its disk. Once A's
    # heartbeat is stale, B claims the run, fetches both from the store and finishes it.
    time.sleep(2.5)
    b = run_worker_host(host_b, database_url, s3_env, killed_id, None)
    assert "task result: succeeded" in b.stdout, b.stdout[-3000:] + b.stderr[-3000:]
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{killed_id}/events").json()]
    assert any(m.startswith(f"resuming from step {KILL_AT}") for m in events), events
    run_b = host_b / "artifacts" / "runs" / str(killed_id)
    assert (run_b / "checkpoints" / f"checkpoint-{KILL_AT}" / "trainer_state.json").is_file()
    assert not (host_a / "artifacts" / "runs" / str(killed_id) / "final").exists()

    # The same run uninterrupted, on host C (this process): B went on with the very next batch.
    with host(host_c, s3_env | {"LLMIDE_DATABASE_URL": database_url}):
        from workers.tasks import train_run

        assert train_run.apply(args=[straight_id], task_id="host-c").result == "succeeded"
    resumed, straight = train_losses(team, killed_id), train_losses(team, straight_id)
    assert sorted(resumed) == sorted(straight) == list(range(1, STEPS + 1))
    for step in range(KILL_AT + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4, abs=1e-5), step

    # The registered version lives in the store; the web asks the server for it by key.
    with session_scope() as session:
        version = registry.version_for_run(session=session, run_id=killed_id)
        assert version is not None
        key = version.storage_key
        assert targets.serving_path(key) == key

    # An inference server with its own data folder pulls the version, then loads it.
    with host(tmp_path / "inference", s3_env):
        from app.core.settings import get_settings
        from workers.inference.registry import ModelRegistry

        models = ModelRegistry(get_settings())
        entry = models.ensure("fleet-model", key)
        assert entry.done.wait(timeout=300)
        assert entry.status == "ready", entry.error
        assert (tmp_path / "inference" / "artifacts" / key / "model.safetensors").is_file()
        models.unload_all()
