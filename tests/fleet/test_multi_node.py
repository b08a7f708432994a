"""Multi-node training: a run with `nodes: 2` trains on two Celery workers at once, each its own
"machine" (own data folder; Postgres, Redis and the S3 store shared), joined by torchrun's c10d
rendezvous on loopback with gloo. One task claims the run and hosts the rendezvous, the other
worker gets a train_node task and joins; the run reports each step once and is registered."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Team, text_jsonl
from tests.faults.support import LoggedProcess
from tests.fleet.conftest import S3Server

pytestmark = pytest.mark.e2e  # two workers, two torchruns: about a minute
STEPS = 6


@pytest.fixture
def backend() -> str:
    return "postgres"  # the workers share the database and the broker (Redis) with the web


@pytest.fixture
def fleet_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = s3_server.env(s3_server.new_bucket(), "llmide") | {
        "LLMIDE_MAX_CONCURRENT_RUNS": "2",
        "LLMIDE_NODE_ADDRESS": "127.0.0.1",
        "LLMIDE_GANG_TIMEOUT_S": "120",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from app.core.settings import get_settings
    from app.services import artifact_store

    get_settings.cache_clear()
    artifact_store._store_for.cache_clear()
    yield env
    get_settings.cache_clear()
    artifact_store._store_for.cache_clear()


def start_worker(name: str, tmp_path: Path) -> LoggedProcess:
    """A gpu worker on "its own machine": its own data folder, everything else shared."""
    env = dict(os.environ)
    env["LLMIDE_DATA_DIR"] = str(tmp_path / name)
    argv = [sys.executable, "-m", "app.cli", "worker", "--queues", "gpu", "--concurrency", "1"]
    return LoggedProcess(name, argv, env, tmp_path / f"{name}.log").start()


@pytest.fixture
def workers(
    backend: str, fleet_env: dict[str, str], installation: Path, tmp_path: Path
) -> Iterator[list[LoggedProcess]]:
    """Two workers to begin with; a test may append more."""
    assert backend == "postgres" and os.environ.get("LLMIDE_DATABASE_URL")
    started = [start_worker(name, tmp_path) for name in ("node-a", "node-b")]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop(timeout=30)


def wait_for_end(team: Team, run_id: int, workers: list[LoggedProcess]) -> dict:
    deadline = time.monotonic() + 600
    while (run := team.viewer.get(f"/api/v1/runs/{run_id}").json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, "\n".join(w.log_tail(4000) for w in workers)
        time.sleep(1)
    return run


def test_a_two_node_run_trains_on_two_workers_joined_by_a_rendezvous(
    workers: list[LoggedProcess], team: Team, tmp_path: Path
) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    config = {"max_steps": STEPS, "block_size": 16, "batch_size": 2, "save_steps": 3, "nodes": 2}
    launched = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert launched.status_code == 201, launched.text
    run_id = int(launched.json()["id"])

    run = wait_for_end(team, run_id, workers)
    logs = "\n".join(w.log_tail(4000) for w in workers)
    assert run["status"] == "succeeded", (run, logs)

    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert any(m.startswith("2 nodes × 1 device(s): waiting for every node") for m in events)
    # One data-parallel world across both machines: two processes, one per node.
    assert any(m.startswith("data parallel on 2 processes (gloo)") for m in events), events
    points = team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
    assert [p["step"] for p in points if "train_loss" in p["values"]] == list(range(1, STEPS + 1))
    checkpoints = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert [(c["step"], c["is_final"]) for c in checkpoints] == [(3, False), (STEPS, True)]
    # Each machine fetched the dataset into its own folder; the node task really trained.
    for node in ("node-a", "node-b"):
        assert list((tmp_path / node / "artifacts" / "datasets" / "versions").glob("*.jsonl"))
    # The other node's task logs its end after rank 0 has already finished the run: wait for it
    # (whole logs, not tails: a chatty worker pushes the task's "received" line out of a tail).
    deadline = time.monotonic() + 60
    while not all(s in whole_logs(workers) for s in ("llmide.train_node", "node done")):
        assert time.monotonic() < deadline, whole_logs(workers)[-8000:]
        time.sleep(0.5)


def whole_logs(workers: list[LoggedProcess]) -> str:
    return "\n".join(w.log_tail(10**9) for w in workers)
