"""The web process killed with SIGKILL mid-run and started again (web and worker run as separate
processes, embedded SQLite database and broker): training never notices, and a reconnecting
run page gets exactly the points it missed."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.faults.support import (
    LoggedProcess,
    RunWatcher,
    api_client,
    faults_env,
    launch_run,
    stored_points,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

STEPS = 100


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return faults_env(tmp_path / "data")


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[LoggedProcess]:
    process = LoggedProcess(
        "worker", [sys.executable, "-m", "app.cli", "worker"], env, tmp_path / "worker.log"
    )
    yield process
    process.stop()


def web(env: dict[str, str], tmp_path: Path) -> LoggedProcess:
    return LoggedProcess(
        "web", [sys.executable, "-m", "app.cli", "serve", "--web-only"], env, tmp_path / "web.log"
    )


def test_a_killed_web_process_costs_the_run_nothing_and_the_page_catches_up_exactly(
    env: dict[str, str], tmp_path: Path, worker: LoggedProcess
) -> None:
    base_url = f"http://127.0.0.1:{env['LLMIDE_PORT']}"
    first_web = web(env, tmp_path).start()
    second_web = web(env, tmp_path)

    def log() -> str:
        return (
            f"--- web log ---\n{second_web.log_tail(3000) if second_web.process else ''}"
            f"{first_web.log_tail(3000)}\n--- worker log ---\n{worker.log_tail()}"
        )

    try:
        wait_healthy(base_url, timeout=60, log=log)  # migrated the database
        worker.start()
        api = api_client(env, base_url)
        token = api.headers["Authorization"].removeprefix("Bearer ")
        run_id = launch_run(api, rows=600, max_steps=STEPS)
        watcher = RunWatcher(base_url, token, run_id).start()
        wait_for(lambda: watcher.last_step() >= 15, timeout=180, what="live points", log=log)

        first_web.kill9()
        # What the client had once it noticed: points already in its socket buffer still count.
        wait_for(lambda: watcher.errors, timeout=10, what="the client to see the drop", log=log)
        step_at_kill = watcher.last_step()
        time.sleep(2)
        second_web.start()
        wait_healthy(base_url, timeout=60, log=log)
        step_when_back = api.get(f"/api/v1/runs/{run_id}").json()["step"]
        wait_for(lambda: watcher.connections >= 2, timeout=30, what="a reconnect", log=log)
        watcher.wait_done(log)

        run = api.get(f"/api/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["step"] == STEPS, (run, log())
        stored = stored_points(api, run_id)
        steps = sorted(step for step, name in stored if name == "train_loss")
        assert steps == list(range(1, STEPS + 1)), "every step trained and stored exactly once"

        assert step_when_back > step_at_kill, "training went on while no web process was there"
        with closing(sqlite3.connect(Path(env["LLMIDE_DATA_DIR"]) / "llmide.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        reconnected = [p for p in watcher.points if p.connection == 2]
        # The reconnect asked for everything after its last step minus one (that step may have
        # had only some of its points) and got exactly that: nothing older, nothing missing,
        # nothing twice.
        after = watcher.reconnect_after_steps[0]
        assert after == step_at_kill - 1
        assert sorted((p.step, p.name) for p in reconnected) == sorted(
            key for key in stored if key[0] > after
        )
        assert set(watcher.counts()) == stored
        # Across both connections only the step asked for again came twice.
        assert {step for step, _ in watcher.duplicates()} <= {after + 1}, watcher.duplicates()

        # One run, one final checkpoint, one registered version.
        checkpoints = api.get(f"/api/v1/runs/{run_id}/checkpoints").json()
        assert [c["step"] for c in checkpoints if c["is_final"]] == [STEPS]
        versions = [v for m in api.get("/api/v1/models").json() for v in m["versions"]]
        assert [v["run_id"] for v in versions] == [run_id], versions
        api.close()
    finally:
        second_web.stop()
        first_web.stop()
