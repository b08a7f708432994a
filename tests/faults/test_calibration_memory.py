"""The calibration loop the probe found, against a real worker: the launch form's estimate of a
shape that cannot fit (scratch-small, batch 512 x block 1024: ~93 GiB) grew a worker to 22.8 GB
until the kernel killed it, and Celery redelivered the calibration again and again.

The worker here runs capped (prlimit: 4 GiB of data a process) and watched by this test's own
OOM killer (SIGKILL to any of its processes past 2 GiB resident), so even a regression can never
exhaust the machine; with the fix the killer never has to act on its own."""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest

from app.core.celery_config import CALIBRATE_TASK, GPU_QUEUE
from tests.faults.support import (
    LoggedProcess,
    RedisServer,
    api_client,
    cli,
    faults_env,
    postgres_database,
    wait_for,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

GIB = 2**30
PROCESS_DATA_CAP = 4 * GIB
OOM_KILL_RSS = 2 * GIB
HUGE = ("scratch-small", 512, 1024)


class OomKiller:
    """SIGKILL to any process of a tree past a resident size, as the kernel would on a small
    machine; records what it killed."""

    def __init__(self, root_pid: int, limit: int) -> None:
        self.root_pid, self.limit = root_pid, limit
        self.killed: list[str] = []
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with suppress(psutil.Error):
                root = psutil.Process(self.root_pid)
                for process in [root, *root.children(recursive=True)]:
                    with suppress(psutil.Error):
                        if process.memory_info().rss > self.limit:
                            self.killed.append(" ".join(process.cmdline())[:200])
                            process.kill()

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[tuple[dict[str, str], str, RedisServer]]:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        with postgres_database("calibration") as database_url:
            env = faults_env(
                tmp_path / "data",
                LLMIDE_DATABASE_URL=database_url,
                LLMIDE_REDIS_URL=redis_server.url,
                LLMIDE_CALIBRATION_MEMORY_GB="1",
            )
            cli(env, "migrate")
            yield env, f"http://127.0.0.1:{env['LLMIDE_PORT']}", redis_server
    finally:
        redis_server.kill()


def estimate(api: httpx.Client, shape: tuple[str, int, int]) -> dict:  # type: ignore[type-arg]
    base_model, batch_size, block_size = shape
    answer = api.post(
        "/api/v1/runs/estimate",
        json={
            "base_model": base_model,
            "config": {"batch_size": batch_size, "block_size": block_size},
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_calibration_never_runs_what_cannot_fit_and_a_lost_one_is_not_redelivered(
    installation: tuple[dict[str, str], str, RedisServer], tmp_path: Path
) -> None:
    env, base_url, redis_server = installation
    import redis
    from celery import Celery

    web = LoggedProcess(
        "web",
        [sys.executable, "-m", "app.cli", "serve", "--web-only", "--no-migrate", "--workers=1"],
        env,
        tmp_path / "web.log",
    ).start()
    worker = LoggedProcess(
        "worker",
        ["prlimit", f"--data={PROCESS_DATA_CAP}", "--",
         sys.executable, "-m", "app.cli", "worker", "--queues", GPU_QUEUE],
        env,
        tmp_path / "worker.log",
    ).start()  # fmt: skip
    killer = OomKiller(worker.pid, OOM_KILL_RSS)
    broker = redis.Redis.from_url(redis_server.url)
    sender = Celery("test-sender", broker=redis_server.url)
    try:
        wait_healthy(base_url, timeout=90, log=web.log_tail)
        api = api_client(env, base_url)
        wait_for(
            lambda: "ready" in worker.log_tail(), timeout=120, what="worker", log=worker.log_tail
        )

        # 1. The launch form asks about the probe's shape: nothing is sent to a worker.
        huge = estimate(api, HUGE)
        assert huge["fits"] is False and huge["calibrating"] is False, huge
        assert broker.llen(GPU_QUEUE) == 0

        # 2. Sent anyway (an older web, another client): the worker refuses by arithmetic.
        sender.send_task(CALIBRATE_TASK, args=list(HUGE), queue=GPU_QUEUE)
        refused = wait_for(
            lambda: estimate(api, HUGE)["calibration_error"],
            timeout=120,
            what="the refusal",
            log=worker.log_tail,
        )
        assert refused.startswith("not timed: it needs about 92.7 GiB"), refused

        # 3. A calibration whose worker process is killed mid-way is not delivered again.
        lost = sender.send_task(CALIBRATE_TASK, args=["scratch-tiny", 8, 64], queue=GPU_QUEUE)
        timing = wait_for(
            lambda: _calibration_child(worker.pid), timeout=120, what="the timing child",
            log=worker.log_tail,
        )  # fmt: skip
        pool = timing.parent()
        for process in (timing, pool):
            with suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        # A later calibration finishing shows the worker took the next message, not the lost
        # one again (a rejected message goes back to the front of the queue).
        sender.send_task(CALIBRATE_TASK, args=["scratch-nano", 2, 16], queue=GPU_QUEUE)
        wait_for(
            lambda: (
                estimate(api, ("scratch-nano", 2, 16))["duration_source"] == "calibration"
                or estimate(api, ("scratch-nano", 2, 16))["calibration_error"]
            ),
            timeout=240,
            what="the next calibration",
            log=worker.log_tail,
        )
        received = re.findall(rf"{CALIBRATE_TASK}\[{lost.id}\] received", worker.log_tail(10**7))
        assert len(received) == 1, worker.log_tail()
        assert worker.alive() and broker.llen(GPU_QUEUE) == 0
        assert estimate(api, ("scratch-nano", 2, 16))["duration_source"] == "calibration"
        assert killer.killed == [], killer.killed
    finally:
        killer.stop()
        worker.stop()
        web.stop()


def _calibration_child(worker_pid: int) -> psutil.Process | None:
    with suppress(psutil.Error):
        for process in psutil.Process(worker_pid).children(recursive=True):
            with suppress(psutil.Error):
                if "workers.engine.calibrate" in " ".join(process.cmdline()):
                    return process
    return None
