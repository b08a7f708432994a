"""Live-metrics latency: from the worker's step end to the websocket client receiving the point.

The worker side is the real RunReporter (what the Celery task hands the training engine); the
web side is a real `llmide serve --web-only` process; the client is a real websocket. Both modes
are measured in the same run: embedded (SQLite, the hub polls the database) and Redis (pub/sub
wake-ups; Postgres as the database when it is running). Each is reported against its target.

    python bench/stream_latency.py [--steps 300] [--interval-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import websockets

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench._support import (  # noqa: E402
    free_port,
    fresh_postgres_url,
    percentile,
    seed_bench_run,
    web_server,
)

TARGETS_MS = {"embedded": 1000.0, "redis": 250.0}


def prepare(env: dict[str, str]) -> tuple[str, int]:
    """Migrate, create a user, token, dataset and a running run through the services."""
    os.environ.update(env)
    return seed_bench_run(status="running")


async def receive(
    url: str, token: str, arrivals: dict[int, float], ready: threading.Event, steps: int
) -> None:
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        ready.set()
        while len(arrivals) < steps:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            now = time.perf_counter()
            if message["type"] == "metrics":
                for point in message["points"]:
                    arrivals.setdefault(point["step"], now)


def measure(mode: str, steps: int, interval_s: float) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmide-bench-{mode}-")) / "data"
    env = {"LLMIDE_DATA_DIR": str(data_dir), "LLMIDE_PORT": str(free_port())}
    if mode == "redis":
        env["LLMIDE_REDIS_URL"] = "redis://127.0.0.1:6379/14"
        if url := fresh_postgres_url("llmide_bench"):
            env["LLMIDE_DATABASE_URL"] = url
    for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
        del os.environ[key]
    token, run_id = prepare(env)
    base = f"http://127.0.0.1:{env['LLMIDE_PORT']}"
    with web_server(env):
        arrivals: dict[int, float] = {}
        ready = threading.Event()
        client = threading.Thread(
            target=lambda: asyncio.run(
                receive(
                    base.replace("http", "ws") + f"/ws/runs/{run_id}", token, arrivals, ready, steps
                )
            ),
            daemon=True,
        )
        client.start()
        ready.wait(30)
        time.sleep(0.5)
        from workers.metrics_sink import RunReporter

        reporter = RunReporter(run_id)
        emitted: dict[int, float] = {}
        for step in range(1, steps + 1):
            emitted[step] = time.perf_counter()
            reporter.on_metrics(step, {"train_loss": 5.0 / step, "learning_rate": 1e-3})
            time.sleep(interval_s)
        reporter.close()
        client.join(timeout=30)
    missing = [s for s in emitted if s not in arrivals]
    if missing:
        raise SystemExit(f"{mode}: {len(missing)} points never arrived (first: {missing[:5]})")
    return [(arrivals[s] - emitted[s]) * 1000 for s in emitted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    results: dict[str, float] = {}
    for mode in ("embedded", "redis"):
        latencies = measure(mode, args.steps, args.interval_ms / 1000)
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        results[mode] = p95
        print(
            f"{mode:9s} steps={len(latencies)} p50={p50:.1f} ms p95={p95:.1f} ms "
            f"target={TARGETS_MS[mode]:.0f} ms p95/target={p95 / TARGETS_MS[mode]:.2f}"
        )
    print(f"stream_latency_p95_ms_embedded={results['embedded']:.1f}")
    print(f"stream_latency_p95_ms_redis={results['redis']:.1f}")


if __name__ == "__main__":
    main()
