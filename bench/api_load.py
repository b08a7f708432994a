"""The API and pages under load: 50 dashboard users, then a burst of 200 dataset uploads.

A real `llmide serve --web-only` (two web processes, as `llmide serve` runs by default) serves
one workspace: 1,000 runs of 500 steps x 2 metrics (1M points) plus one big run of 100k points, five
log lines per run, 20 datasets, 20 registered models with ~950 versions (every successful run
registers one). The bulk rows are seeded in bulk (COPY on Postgres, executemany on SQLite):
seeding is not what is measured. Then, all on 127.0.0.1:

1. `--users` dashboard users, each signed in through /login with its own session cookie (every
   other one calls the JSON API and the websocket with its own bearer token instead), cycle
   for `--duration` seconds through `/healthz`, the list pages (`/`, `/runs`, `/datasets`,
   `/models`, `/api/v1/runs`, `/api/v1/datasets`) and a random run's page, JSON, metrics and
   websocket (connect, time to the history message, close); one run visit in 20 is the big run.
   Each user pauses uniformly 0..2 x `--think-ms` (mean 0.5 s) between requests: a very busy
   person, about 1.5 requests a second each.
2. `--uploads` concurrent `GET /healthz`, then as many concurrent small JSONL uploads
   (`POST /api/v1/datasets`, bearer tokens), one connection each.

Per route it prints p50/p95, errors (zero expected), the p95 against `/healthz` measured under
the same load (the framework floor) and against the 200 ms target. Both modes run, same data:
`postgres` (Postgres + Redis, production) and `sqlite` (the embedded default). Last lines:
`upload_burst_p95_ms_<mode>`, `api_p95_ms_<mode>` (the worst dashboard route), `api_errors_<mode>`,
and `api_p95_ms`, the worst dashboard route of all modes. About 2 minutes on a 2-core machine.

    python bench/api_load.py [--modes postgres,sqlite] [--duration 30] [--users 50]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import websockets

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench._support import free_port, fresh_postgres_url, percentile, web_server  # noqa: E402

TARGET_MS = 200.0
PASSWORD = "bench-pass-123"
EMAIL = "load@example.com"
PG_DB = "llmide_load"
METRIC_NAMES = ("train_loss", "learning_rate")
LIST_ROUTES = ["/", "/runs", "/datasets", "/models", "/api/v1/runs", "/api/v1/datasets"]
RUN_ROUTES = ["/runs/{id}", "/api/v1/runs/{id}", "/api/v1/runs/{id}/metrics", "/ws/runs/{id}"]


@dataclass
class Seeded:
    tokens: list[str]
    run_ids: list[int]
    big_run_id: int
    points: int


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: dict[str, str] = field(default_factory=dict)

    def fail(self, route: str, why: str) -> None:
        self.errors[route] += 1
        self.samples.setdefault(route, why)  # the first failure of each route


# --- seeding (not measured) -------------------------------------------------------------------
def _jsonl(rows: int, tag: str) -> bytes:
    return "".join(
        json.dumps({"text": f"{tag} example {i}: the quick brown fox jumps."}) + "\n"
        for i in range(rows)
    ).encode()


def _stamp(start: datetime, step: int) -> str:
    return (start + timedelta(seconds=step)).strftime("%Y-%m-%d %H:%M:%S.%f")


def _bulk_points(engine, rows_of_runs: list[tuple[int, int]], start: datetime) -> int:  # type: ignore[no-untyped-def]
    """Insert (run_id, steps) worth of points: COPY on Postgres, executemany on SQLite."""
    total = 0
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            with raw.cursor() as cur:
                copy_sql = "COPY metric_points (run_id, step, name, value, created_at) FROM STDIN"
                with cur.copy(copy_sql) as copy:
                    for run_id, steps in rows_of_runs:
                        buf = io.StringIO()
                        for step in range(1, steps + 1):
                            at = _stamp(start, step)
                            buf.write(f"{run_id}\t{step}\ttrain_loss\t{5.0 / step!r}\t{at}\n")
                            buf.write(f"{run_id}\t{step}\tlearning_rate\t0.001\t{at}\n")
                        copy.write(buf.getvalue())
                        total += 2 * steps
        else:
            cur = raw.cursor()
            for run_id, steps in rows_of_runs:
                cur.executemany(
                    "INSERT INTO metric_points (run_id, step, name, value, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (run_id, step, name, 5.0 / step if name == "train_loss" else 1e-3, at)
                        for step in range(1, steps + 1)
                        for at in [_stamp(start, step)]
                        for name in METRIC_NAMES
                    ],
                )
                total += 2 * steps
            cur.close()
        raw.commit()
    finally:
        raw.close()
    return total


def seed(env: dict[str, str], runs: int, steps: int, big_steps: int, users: int) -> Seeded:
    """Migrate, then a user, tokens and datasets through the services; the bulk rows in bulk."""
    os.environ.update(env)
    from sqlalchemy import insert, select

    from app.core.settings import get_settings
    from app.db.migrate import upgrade_to_head
    from app.db.models import (
        Checkpoint,
        Deployment,
        DeploymentStatus,
        ModelVersion,
        RegisteredModel,
        Run,
        RunEvent,
        RunStatus,
    )
    from app.db.session import get_engine, reset_engine_cache, session_scope
    from app.services.datasets import intake as dataset_intake
    from app.services.runs.config import RunConfig
    from app.services.workspaces import access as workspace_access
    from app.services.workspaces import tokens
    from app.services.workspaces import users as users_service

    get_settings.cache_clear()
    reset_engine_cache()
    get_settings().ensure_dirs()
    upgrade_to_head(get_settings().sqlalchemy_url)
    start = datetime(2026, 1, 1)
    with session_scope() as session:
        user = users_service.create_user(session=session, email=EMAIL, password=PASSWORD)
        secrets = [
            tokens.create_token(session=session, user=user, name=f"load-{i}")[1]
            for i in range(users)
        ]
        ctx = workspace_access.context_for(session=session, user=user, workspace_ref=None)
        dataset_ids = [
            dataset_intake.create_from_upload(
                session=session,
                ctx=ctx,
                stream=io.BytesIO(_jsonl(50, f"seed {i}")),
                filename=f"seed-{i}.jsonl",
            ).id
            for i in range(20)
        ]
        workspace_id, user_id = ctx.workspace.id, user.id
    config = RunConfig().model_dump()
    statuses = [RunStatus.succeeded] * 95 + [RunStatus.running] * 3 + [RunStatus.failed] * 2
    run_rows = [
        {
            "workspace_id": workspace_id,
            "name": f"load run {i}",
            "base_model": "scratch-tiny",
            "dataset_id": dataset_ids[i % len(dataset_ids)],
            "config": config,
            "suffix": f"team{i % 20}",
            "status": statuses[i % len(statuses)],
            "step": steps,
            "total_steps": steps,
            "created_by_id": user_id,
            "created_at": start + timedelta(minutes=i),
            "started_at": start + timedelta(minutes=i),
            "finished_at": start + timedelta(minutes=i + 30),
        }
        for i in range(runs + 1)
    ]
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(insert(Run), run_rows)
        run_ids = list(
            conn.scalars(select(Run.id).where(Run.workspace_id == workspace_id).order_by(Run.id))
        )
        big_run_id, run_ids = run_ids[-1], run_ids[:-1]
        conn.execute(
            insert(RunEvent),
            [
                {"run_id": r, "message": f"log line {k}", "created_at": start}
                for r in run_ids + [big_run_id]
                for k in range(5)
            ],
        )
        succeeded = [r for i, r in enumerate(run_ids) if run_rows[i]["status"] == "succeeded"]
        conn.execute(
            insert(Checkpoint),
            [
                {
                    "run_id": r,
                    "step": steps,
                    "storage_key": f"runs/{r}/final",
                    "metrics": {"train_loss": 0.5},
                    "is_final": True,
                    "created_at": start,
                }
                for r in succeeded
            ],
        )
        checkpoint_ids = dict(conn.execute(select(Checkpoint.run_id, Checkpoint.id)).all())
        conn.execute(
            insert(RegisteredModel),
            [
                {"workspace_id": workspace_id, "name": f"team{t}", "created_at": start}
                for t in range(20)
            ],
        )
        model_ids = dict(conn.execute(select(RegisteredModel.name, RegisteredModel.id)).all())
        versions: dict[str, int] = defaultdict(int)
        version_rows = []
        for i, r in enumerate(run_ids):
            if r not in checkpoint_ids:
                continue
            team = run_rows[i]["suffix"]
            versions[team] += 1
            version_rows.append(
                {
                    "workspace_id": workspace_id,
                    "registered_model_id": model_ids[team],
                    "version": versions[team],
                    "serving_name": f"ft:scratch-tiny:load:{team}:run-{r}",
                    "run_id": r,
                    "checkpoint_id": checkpoint_ids[r],
                    "storage_key": f"runs/{r}/final",
                    "lineage": {
                        "run_id": r,
                        "base_model": "scratch-tiny",
                        "step": steps,
                        "dataset_id": run_rows[i]["dataset_id"],
                        "config": config,
                        "metrics": {"train_loss": 0.5},
                    },
                    "created_at": start,
                }
            )
        conn.execute(insert(ModelVersion), version_rows)
        first_versions = list(conn.scalars(select(ModelVersion.id).limit(5)))
        conn.execute(
            insert(Deployment),
            [
                {
                    "workspace_id": workspace_id,
                    "model_version_id": v,
                    "status": DeploymentStatus.failed if k % 2 else DeploymentStatus.stopped,
                    "created_at": start,
                }
                for k, v in enumerate(first_versions)
            ],
        )
    points = _bulk_points(engine, [(r, steps) for r in run_ids] + [(big_run_id, big_steps)], start)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    from app.services import chart_history

    with session_scope() as session:
        # What the worker does as a run ends: a long run's chart history is thinned once.
        chart_history.store_if_long(session=session, run=session.get(Run, big_run_id))
    reset_engine_cache()
    return Seeded(tokens=secrets, run_ids=run_ids, big_run_id=big_run_id, points=points)


# --- the load -------------------------------------------------------------------------------
@dataclass
class User:
    client: httpx.AsyncClient
    cookie: str
    token: str | None  # None: this user calls the API with its session cookie

    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


async def sign_in(base: str, token: str | None) -> User:
    client = httpx.AsyncClient(base_url=base, timeout=60)
    page = await client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if csrf is None:
        raise SystemExit(f"no CSRF field on /login ({page.status_code})")
    reply = await client.post(
        "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": csrf.group(1)}
    )
    if reply.status_code != 303:
        raise SystemExit(f"sign-in failed: {reply.status_code} {reply.text[:200]}")
    return User(client=client, cookie=client.cookies["llmide_session"], token=token)


async def timed_get(user: User, route: str, path: str, stats: Stats) -> None:
    headers = user.api_headers() if path.startswith("/api/") else {}
    started = time.perf_counter()
    try:
        reply = await user.client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        stats.fail(route, repr(exc))
        return
    elapsed = (time.perf_counter() - started) * 1000
    if reply.status_code != 200:
        stats.fail(route, f"HTTP {reply.status_code} {reply.text[:120]!r}")
        return
    stats.latencies[route].append(elapsed)


async def timed_ws(user: User, route: str, ws_base: str, run_id: int, stats: Stats) -> None:
    headers = (
        {"Authorization": f"Bearer {user.token}"}
        if user.token
        else {"Cookie": f"llmide_session={user.cookie}"}
    )
    started = time.perf_counter()
    try:
        async with websockets.connect(
            f"{ws_base}/ws/runs/{run_id}", additional_headers=headers, max_size=None
        ) as ws:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            elapsed = (time.perf_counter() - started) * 1000
    except Exception as exc:  # a refused handshake, a close, a timeout: all errors here
        stats.fail(route, repr(exc))
        return
    if message.get("type") != "metrics" or not message.get("points"):
        stats.fail(route, f"first message was not the history: {str(message)[:120]}")
        return
    stats.latencies[route].append(elapsed)


async def dashboard_user(
    user: User,
    index: int,
    seeded: Seeded,
    ws_base: str,
    deadline: float,
    think_s: float,
    stats: Stats,
) -> None:
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, max(think_s, 0.05)))  # do not start in lockstep
    while time.perf_counter() < deadline:
        big = rng.random() < 0.05
        run_id = seeded.big_run_id if big else rng.choice(seeded.run_ids)
        suffix = " (big run)" if big else ""
        for route in ["/healthz", *LIST_ROUTES, *RUN_ROUTES]:
            if time.perf_counter() >= deadline:
                return
            label = route + (suffix if "{id}" in route else "")
            if route.startswith("/ws/"):
                await timed_ws(user, label, ws_base, run_id, stats)
            else:
                await timed_get(user, label, route.format(id=run_id), stats)
            if think_s:
                await asyncio.sleep(rng.uniform(0, 2 * think_s))


async def upload_burst(base: str, seeded: Seeded, count: int, stats: Stats) -> float:
    """`count` concurrent /healthz (the floor), then `count` concurrent uploads; their wall time.

    One client (one kept-alive connection) per request: a single httpx pool of 200 connections
    costs its own process more CPU than the server spends answering.
    """
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(count)]

    async def health(client: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        try:
            reply = await client.get("/healthz")
        except httpx.HTTPError as exc:
            stats.fail("GET /healthz x burst", repr(exc))
            return
        if reply.status_code != 200:
            stats.fail("GET /healthz x burst", f"HTTP {reply.status_code}")
            return
        stats.latencies["GET /healthz x burst"].append((time.perf_counter() - started) * 1000)

    async def upload(i: int) -> None:
        token = seeded.tokens[i % len(seeded.tokens)]
        files = {"file": (f"burst-{i}.jsonl", _jsonl(20, f"burst {i}"), "application/jsonl")}
        started = time.perf_counter()
        try:
            reply = await clients[i].post(
                "/api/v1/datasets", files=files, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            stats.fail("POST /api/v1/datasets x burst", repr(exc))
            return
        if reply.status_code != 201:
            stats.fail("POST /api/v1/datasets x burst", f"HTTP {reply.status_code}")
            return
        elapsed = (time.perf_counter() - started) * 1000
        stats.latencies["POST /api/v1/datasets x burst"].append(elapsed)

    try:
        for client in clients:  # open the connections one by one, outside the measurement
            await client.get("/healthz")
        await asyncio.gather(*(health(client) for client in clients))
        started = time.perf_counter()
        await asyncio.gather(*(upload(i) for i in range(count)))
        return time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by a process and its children (`--workers`);
    this process by default."""
    if pid is None:
        return time.process_time()
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def drive(
    base: str, seeded: Seeded, args: argparse.Namespace, server_pid: int
) -> tuple[Stats, Stats, float]:
    people = await asyncio.gather(
        *(sign_in(base, seeded.tokens[i] if i % 2 else None) for i in range(args.users))
    )
    ws_base = base.replace("http://", "ws://")
    stats = Stats()
    server_cpu, client_cpu = cpu_s(server_pid), cpu_s()
    started = time.perf_counter()
    deadline = started + args.duration
    await asyncio.gather(
        *(
            dashboard_user(u, i, seeded, ws_base, deadline, args.think_ms / 1000, stats)
            for i, u in enumerate(people)
        )
    )
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_s(server_pid) - server_cpu, cpu_s() - client_cpu
    requests = sum(len(v) for v in stats.latencies.values()) + sum(stats.errors.values())
    print(
        f"  {args.users} users for {wall:.0f} s: {requests} requests ({requests / wall:.0f}/s); "
        f"CPU: server {100 * server_cpu / wall:.0f}% of one core, "
        f"this client {100 * client_cpu / wall:.0f}%",
        flush=True,
    )
    for person in people:
        await person.client.aclose()
    burst = Stats()
    burst_wall = await upload_burst(base, seeded, args.uploads, burst)
    print(f"  upload burst: {args.uploads} uploads in {burst_wall:.2f} s", flush=True)
    return stats, burst, wall


# --- reporting ------------------------------------------------------------------------------


def report(stats: Stats, floor_route: str) -> float:
    """Print one line per route; return the worst p95."""
    floor = percentile(stats.latencies[floor_route], 95)
    print(
        f"  {'route':34s} {'n':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p95/floor':>10s} "
        f"{'p95/200ms':>10s} {'errors':>6s}"
    )
    worst = 0.0
    for route in sorted(set(stats.latencies) | set(stats.errors)):
        values = stats.latencies.get(route, [])
        p50, p95 = percentile(values, 50), percentile(values, 95)
        worst = max(worst, p95)
        print(
            f"  {route:34s} {len(values):6d} {p50:8.1f} {p95:8.1f} {p95 / floor:10.2f} "
            f"{p95 / TARGET_MS:10.2f} {stats.errors.get(route, 0):6d}"
        )
    for route, why in stats.samples.items():
        print(f"  first error of {route}: {why}")
    return worst


def measure(mode: str, args: argparse.Namespace) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmide-load-{mode}-")) / "data"
    env = {
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_PORT": str(free_port()),
        "LLMIDE_SECRET_KEY": "load-bench-" + "k" * 40,
    }
    label = "SQLite (embedded, polling)"
    if mode == "postgres":
        url = fresh_postgres_url(PG_DB)
        if url is None:
            print("postgres: not reachable on 127.0.0.1:5432; skipped")
            return 0.0
        env["LLMIDE_DATABASE_URL"] = url
        env["LLMIDE_REDIS_URL"] = "redis://127.0.0.1:6379/13"
        label = "Postgres + Redis (production)"
    for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
        del os.environ[key]
    started = time.perf_counter()
    seeded = seed(env, args.runs, args.steps, args.big_steps, args.users)
    print(
        f"{mode}: {label}, {args.server_workers} web process(es); seeded "
        f"{len(seeded.run_ids)} runs + 1 big, {seeded.points:,} points "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    log_path = data_dir.parent / "server.log"
    base = f"http://127.0.0.1:{env['LLMIDE_PORT']}"
    with (
        log_path.open("wb") as log,
        web_server(env, "--workers", str(args.server_workers), log=log) as server,
    ):
        stats, burst, wall = asyncio.run(drive(base, seeded, args, server.pid))
    errors = sum(stats.errors.values()) + sum(burst.errors.values())
    print(f"  errors={errors}; floor = GET /healthz under the same load", flush=True)
    if errors:
        # The server's own account of the failures: each distinct exception line, counted.
        lines = log_path.read_text(errors="replace").splitlines()
        causes = Counter(ln[:160] for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln))
        print(f"  server log {log_path}:")
        for line, count in causes.most_common(5):
            print(f"    {count} x {line}")
    worst = report(stats, "/healthz")
    print(f"  {args.uploads} concurrent uploads; floor = {args.uploads} concurrent GET /healthz")
    burst_p95 = report(burst, "GET /healthz x burst")
    print(f"upload_burst_p95_ms_{mode}={burst_p95:.1f}")
    print(f"api_p95_ms_{mode}={worst:.1f}")
    print(f"api_errors_{mode}={errors}", flush=True)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="postgres,sqlite")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of dashboard load")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument(
        "--think-ms", type=float, default=500.0, help="mean pause between a user's requests"
    )
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument(
        "--server-workers", type=int, default=2, help="llmide serve --workers (2, the default)"
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500, help="steps per run (2 points each)")
    parser.add_argument("--big-steps", type=int, default=50_000, help="steps of the big run")
    args = parser.parse_args()
    worst = [measure(mode.strip(), args) for mode in args.modes.split(",") if mode.strip()]
    print(f"api_p95_ms={max(worst):.1f}")


if __name__ == "__main__":
    main()
