"""Chart data for a long run: the compare API's downsampled series against sending every point.

One run with `--points` points of one metric (Postgres when it is running, else SQLite). The
baseline is what a chart without server-side downsampling needs: every (step, value) read and
encoded as JSON. The measured path is `run_compare.series` (first, last, lowest and highest
point of each step range, chosen by the database) encoded the same way. Both are timed in the
same run, best of `--repeat`; the figures are the ratios.

    python bench/compare_series.py [--points 1000000] [--max-points 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench._support import fresh_postgres_url, seed_bench_run  # noqa: E402


def prepare(points: int) -> int:
    """Migrate, then one run with `points` train_loss points inserted in bulk."""
    import math
    import random

    from sqlalchemy import insert

    from app.db.models import MetricPoint, RunStatus
    from app.db.session import session_scope

    _, run_id = seed_bench_run(status=RunStatus.succeeded)
    rng = random.Random(0)
    start = datetime(2026, 1, 1)
    chunk = 50_000
    for first in range(0, points, chunk):
        rows = [
            {
                "run_id": run_id,
                "step": i + 1,
                "name": "train_loss",
                "value": 4.0 * math.exp(-i / points * 3) + rng.random() * 0.05,
                "created_at": start + timedelta(milliseconds=100 * i),
            }
            for i in range(first, min(points, first + chunk))
        ]
        with session_scope() as session:
            session.execute(insert(MetricPoint), rows)
    return run_id


def best_of(repeat: int, fn: object) -> tuple[float, int]:
    """Fastest wall time of `fn()` (which returns a JSON body) and the body's size."""
    best, size = float("inf"), 0
    for _ in range(repeat):
        began = time.perf_counter()
        body = fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - began)
        size = len(body)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--max-points", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    os.environ["LLMIDE_DATA_DIR"] = str(data_dir)
    url = fresh_postgres_url("llmide_bench_compare")
    if url:
        os.environ["LLMIDE_DATABASE_URL"] = url
    else:
        os.environ.pop("LLMIDE_DATABASE_URL", None)
    began = time.perf_counter()
    run_id = prepare(args.points)
    print(
        f"database={'postgres' if url else 'sqlite'} points={args.points} "
        f"inserted in {time.perf_counter() - began:.1f} s"
    )

    from sqlalchemy import select

    from app.db.models import MetricPoint, Run
    from app.db.session import session_scope
    from app.services.runs import compare as run_compare

    def every_point() -> bytes:
        with session_scope() as session:
            rows = session.execute(
                select(MetricPoint.step, MetricPoint.value)
                .where(MetricPoint.run_id == run_id, MetricPoint.name == "train_loss")
                .order_by(MetricPoint.step)
            ).all()
            return json.dumps([[s, v] for s, v in rows]).encode()

    def downsampled() -> bytes:
        with session_scope() as session:
            run = session.get(Run, run_id)
            assert run is not None
            series = run_compare.series(
                session=session, run=run, metric="train_loss", max_points=args.max_points
            )
            return json.dumps(series.points).encode()

    base_s, base_bytes = best_of(args.repeat, every_point)
    down_s, down_bytes = best_of(args.repeat, downsampled)
    print(f"every point: {base_s * 1000:.0f} ms, {base_bytes / 1e6:.1f} MB")
    print(f"downsampled to <= {args.max_points}: {down_s * 1000:.0f} ms, {down_bytes / 1e3:.1f} KB")
    print(f"bytes, every point / downsampled: {base_bytes / down_bytes:.0f}x")
    print(f"compare_series_speedup={base_s / down_s:.2f}")


if __name__ == "__main__":
    main()
