"""Redis (broker and live wake-ups) killed and restarted mid-run, with Postgres as the database:
training goes on, the open run page keeps receiving points, and none is lost or repeated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.live import RUN_UPDATES_CHANNEL
from tests.e2e.processes import running_server
from tests.faults.support import (
    RedisServer,
    RunWatcher,
    api_client,
    launch_run,
    postgres_database,
    stored_points,
    wait_for,
)

pytestmark = pytest.mark.e2e

STEPS = 100


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def test_a_redis_restart_mid_run_loses_no_training_and_no_live_point(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with (
        postgres_database("redis") as database_url,
        running_server(
            tmp_path / "data", LLMIDE_REDIS_URL=redis_server.url, LLMIDE_DATABASE_URL=database_url
        ) as server,
    ):

        def log() -> str:
            return (
                f"--- server log ---\n{server.log_tail()}\n"
                f"--- redis log ---\n{redis_server.process.log_tail(1500)}"
            )

        api = api_client(server.env, server.base_url)
        token = api.headers["Authorization"].removeprefix("Bearer ")
        run_id = launch_run(api, rows=600, max_steps=STEPS)
        watcher = RunWatcher(server.base_url, token, run_id).start()
        wait_for(
            lambda: redis_server.subscribers(RUN_UPDATES_CHANNEL) >= 1,
            timeout=30,
            what="the web's hub to subscribe to run updates on Redis",
            log=log,
        )
        wait_for(lambda: watcher.last_step() >= 10, timeout=180, what="live points", log=log)

        redis_server.kill()
        killed_at = time.monotonic()
        # Without Redis the worker keeps training (it only loses its wake-up channel and its
        # broker connection) and the hub falls back to polling the database.
        time.sleep(4)
        redis_server.start()
        restarted_at = time.monotonic()
        step_at_restart = watcher.last_step()
        wait_for(
            lambda: redis_server.subscribers(RUN_UPDATES_CHANNEL) >= 1,
            timeout=30,
            what="the hub to subscribe again to the restarted Redis",
            log=log,
        )
        watcher.wait_done(log)

        run = api.get(f"/api/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["step"] == STEPS, (run, log())
        assert watcher.statuses[-1] == "succeeded"
        steps = sorted(step for step, name in stored_points(api, run_id) if name == "train_loss")
        assert steps == list(range(1, STEPS + 1)), "every step trained and stored exactly once"

        # The same websocket stayed open throughout and got every point exactly once.
        assert watcher.connections == 1, (watcher.errors, log())
        assert watcher.duplicates() == {}
        assert set(watcher.counts()) == stored_points(api, run_id)
        during_outage = [p for p in watcher.points if killed_at < p.at < restarted_at]
        after_restart = [p for p in watcher.points if p.at > restarted_at]
        assert during_outage, "points kept coming while Redis was down (the hub polled)"
        assert max(p.step for p in after_restart) == STEPS > step_at_restart

        # The worker said once that Redis was gone, not at every flush.
        server_log = server.log_path.read_text(errors="replace")
        assert server_log.count("could not publish updates of run") == 1, log()

        # The broker is back for the worker too: a new run is picked up and finishes.
        second = launch_run(api, rows=100, max_steps=3)
        wait_for(
            lambda: api.get(f"/api/v1/runs/{second}").json()["status"] == "succeeded",
            timeout=120,
            what="a run launched after the restart to be trained",
            log=log,
        )
        api.close()
