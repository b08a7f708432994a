"""A worker killed with SIGKILL mid-run: the run resumes from its checkpoint, history intact."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import PASSWORD, corpus, wait_for

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """The process's command line; "" once it has exited (children come and go: a Celery pool
    child ends after each task, web workers restart)."""
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode()


def kill_worker_tree(server: Server) -> None:
    workers = [p for p in children(server.process.pid) if "celery" in cmdline(p)]
    assert len(workers) == 1, [cmdline(p) for p in children(server.process.pid)]
    for pid in [*children(workers[0]), workers[0]]:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("crash") / "data"
    with running_server(data_dir, LLMIDE_RUN_STALE_AFTER_S="3") as srv:
        yield srv


def test_killed_worker_run_resumes_from_checkpoint_without_gaps_or_duplicates(
    server: Server,
) -> None:
    server.cli("user", "create", "ops@example.com", "--password", PASSWORD)
    token = server.cli("token", "create", "ops@example.com").strip()
    api = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    dataset = api.post("/api/v1/datasets", files={"file": ("c.jsonl", corpus(600))}).json()
    run_id = api.post(
        "/api/v1/runs",
        json={"dataset_id": dataset["id"], "config": {"max_steps": 120, "block_size": 32}},
    ).json()["id"]
    wait_for(
        lambda: api.get(f"/api/v1/runs/{run_id}/checkpoints").json(),
        timeout=180,
        what="a first checkpoint",
        server=server,
    )
    step_at_kill = api.get(f"/api/v1/runs/{run_id}").json()["step"]
    assert step_at_kill < 120

    kill_worker_tree(server)

    run = wait_for(
        lambda: (r := api.get(f"/api/v1/runs/{run_id}").json())["status"] == "succeeded" and r,
        timeout=240,
        what="the run to resume and finish",
        server=server,
    )
    events = [e["message"] for e in api.get(f"/api/v1/runs/{run_id}/events").json()]
    assert any("stopped answering" in m for m in events), events
    assert any(m.startswith("resuming from step") for m in events), events
    steps = [
        p["step"]
        for p in api.get(f"/api/v1/runs/{run_id}/metrics").json()
        if "train_loss" in p["values"]
    ]
    assert steps == list(range(1, 121)), "every step exactly once"
    assert run["step"] == 120
    api.close()
