"""Fleet figures: what the run queue costs as the fleet grows.

50 simulated GPU workers (threads, each with its own database connection, as 50 worker
processes would have) drain 5,000 queued runs spread over 20 workspaces, against Postgres and
Redis. Each worker does what a real one does with a run, minus the training: it takes the
next task message off the Redis `gpu` queue (the message the dispatcher sent through Celery),
claims the run (`run_execution.claim`), "trains" for a few milliseconds, and finishes it
(`run_execution.finish`), which hands the freed slot to the next run (`run_queue.dispatch`
under the dispatcher's lock row). LLMIDE_MAX_CONCURRENT_RUNS is 50: one slot a worker.

A dispatch is one `run_queue.dispatch_one` call that sent a run: lock, fair-share pick, mark,
send to Redis, commit. Printed: its latency (p50, p95, max), the SQL statements it ran (per
dispatch), and the whole drain's throughput; the last line is `dispatch_p95_ms_50_workers=`.

    .venv/bin/python bench/fleet.py [--workers 50] [--runs 5000] [--workspaces 20]

Needs Postgres on 127.0.0.1:5432 (a database of its own is made and dropped) and Redis
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/13, flushed first).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import PG_ADMIN, fresh_postgres_url, percentile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--workspaces", type=int, default=20)
    parser.add_argument("--train-ms", type=float, default=5.0, help="simulated training time")
    args = parser.parse_args()

    db_name = f"llmide_bench_fleet_{os.getpid()}"
    url = fresh_postgres_url(db_name)
    if url is None:
        raise SystemExit("Postgres is not running on 127.0.0.1:5432")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ.update(
        {
            "LLMIDE_DATA_DIR": tempfile.mkdtemp(prefix="bench-fleet-"),
            "LLMIDE_DATABASE_URL": url,
            "LLMIDE_REDIS_URL": redis_url,
            "LLMIDE_MAX_CONCURRENT_RUNS": str(args.workers),
        }
    )
    try:
        run(args, redis_url)
    finally:
        from app.db.session import reset_engine_cache

        reset_engine_cache()
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


def seed(args: argparse.Namespace) -> None:
    from sqlalchemy import insert

    from app.db.models import Dataset, Run, Workspace
    from app.db.session import session_scope

    rng = random.Random(7)
    with session_scope() as session:
        workspaces = [Workspace(name=f"team {n}", slug=f"team-{n}") for n in range(args.workspaces)]
        session.add_all(workspaces)
        session.flush()
        datasets = [
            Dataset(
                workspace_id=ws.id,
                name="corpus",
                filename="corpus.jsonl",
                format="text",
                sha256="0" * 64,
                size_bytes=1,
                num_rows=1,
                storage_key="datasets/versions/bench.jsonl",
            )
            for ws in workspaces
        ]
        session.add_all(datasets)
        session.flush()
        # Uneven workspaces (a few teams queue most of the work), mixed priorities.
        weights = [1 / (n + 1) for n in range(args.workspaces)]
        rows = []
        for n in range(args.runs):
            ws = rng.choices(range(args.workspaces), weights)[0]
            rows.append(
                {
                    "workspace_id": workspaces[ws].id,
                    "dataset_id": datasets[ws].id,
                    "name": f"run {n}",
                    "base_model": "scratch-tiny",
                    "config": {},
                    "status": "queued",
                    "priority": rng.choice((0, 1, 1, 1, 2)),
                }
            )
        session.execute(insert(Run), rows)


class Counter:
    """SQL statements per thread while a dispatch is being measured."""

    def __init__(self) -> None:
        self.local = threading.local()

    def on_execute(self, *_: object) -> None:
        if getattr(self.local, "counting", False):
            self.local.count += 1


def run(args: argparse.Namespace, redis_url: str) -> None:
    import redis
    from sqlalchemy import event, func, select

    from app.db import session as db_session
    from app.db.migrate import upgrade_to_head
    from app.db.models import Run, RunStatus
    from app.db.session import get_engine, session_scope
    from app.services.runs import execution as run_execution
    from app.services.runs import queue as run_queue

    upgrade_to_head(
        os.environ["LLMIDE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    )
    # 50 workers are 50 processes with a connection each; here they are threads of one
    # process, so its pool must hold that many, or they would wait on the pool, not the queue.
    db_session.POOL_SIZE = args.workers + 10  # type: ignore[attr-defined]
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    seed(args)

    counter = Counter()
    event.listen(get_engine(), "before_cursor_execute", counter.on_execute)
    latencies: list[float] = []
    queries: list[int] = []
    stats_lock = threading.Lock()
    real_dispatch_one = run_queue.dispatch_one

    def measured_dispatch_one(**kwargs):  # type: ignore[no-untyped-def]
        counter.local.counting, counter.local.count = True, 0
        started = time.perf_counter()
        try:
            sent = real_dispatch_one(**kwargs)
        finally:
            counter.local.counting = False
        if sent is not None:
            with stats_lock:
                latencies.append((time.perf_counter() - started) * 1000)
                queries.append(counter.local.count)
                lock_waits.append(getattr(counter.local, "lock_ms", 0.0))
        return sent

    run_queue.dispatch_one = measured_dispatch_one  # type: ignore[assignment]

    # How much of a dispatch is waiting for the dispatcher's lock row (the other dispatchers'
    # turns) rather than its own work.
    lock_waits: list[float] = []
    real_take_lock = run_queue._take_lock

    def measured_take_lock(session):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        real_take_lock(session)
        counter.local.lock_ms = (time.perf_counter() - started) * 1000

    run_queue._take_lock = measured_take_lock  # type: ignore[assignment]

    done = threading.Event()
    finished = [0]
    errors: list[str] = []

    def worker(index: int) -> None:
        client = redis.Redis.from_url(redis_url)
        while not done.is_set():
            popped = client.brpop(["gpu"], timeout=1)
            if popped is None:
                continue
            message = json.loads(popped[1])
            body = json.loads(base64.b64decode(message["body"]))
            run_id = int(body[0][0])
            try:
                with session_scope() as session:
                    claimed = run_execution.claim(
                        session=session, run_id=run_id, task_id=f"bench-{index}"
                    )
                    if claimed is None:
                        continue
                time.sleep(args.train_ms / 1000)
                with session_scope() as session:
                    run_execution.finish(session=session, run_id=run_id, status=RunStatus.succeeded)
            except Exception as exc:  # a bench that hides errors measures nothing
                errors.append(f"worker {index}, run {run_id}: {type(exc).__name__}: {exc}")
                done.set()
                return
            with stats_lock:
                finished[0] += 1
                if finished[0] >= args.runs:
                    done.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    with session_scope() as session:  # the first 50, as the launches' own dispatch would
        run_queue.dispatch(session=session)
    last_report = time.perf_counter()
    while not done.wait(timeout=1):
        if time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            print(f"  {finished[0]}/{args.runs} runs finished", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join(timeout=5)
    if errors:
        raise SystemExit("\n".join(errors[:5]))
    with session_scope() as session:
        left = session.scalar(select(func.count()).where(Run.status != RunStatus.succeeded))

    print(f"workers={args.workers}")
    print(f"runs={args.runs}")
    print(f"workspaces={args.workspaces}")
    print(f"runs_not_finished={left}")
    print(f"dispatches={len(latencies)}")
    print(f"runs_per_s={args.runs / elapsed:.1f}")
    print(f"queries_per_dispatch={sum(queries) / len(queries):.1f}")
    print(f"lock_wait_p50_ms={percentile(lock_waits, 50):.1f}")
    print(f"lock_wait_p95_ms={percentile(lock_waits, 95):.1f}")
    work = [total - wait for total, wait in zip(latencies, lock_waits, strict=True)]
    print(f"dispatch_work_p50_ms={percentile(work, 50):.1f}")
    print(f"dispatch_work_p95_ms={percentile(work, 95):.1f}")
    print(f"queries_per_dispatch_max={max(queries)}")
    print(f"dispatch_p50_ms_{args.workers}_workers={percentile(latencies, 50):.1f}")
    print(f"dispatch_max_ms_{args.workers}_workers={max(latencies):.1f}")
    print(f"dispatch_p95_ms_{args.workers}_workers={percentile(latencies, 95):.1f}")


if __name__ == "__main__":
    main()
