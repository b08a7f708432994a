"""A calibration runs in a child process capped in memory: a shape that needs more than the cap
ends in a clear "ran out" answer, and the child never grows past the cap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20

# Run in a fresh interpreter: RUSAGE_CHILDREN's peak then covers only the calibration child.
PROBE = """
import json, resource, sys
from workers.engine.calibrate import run_capped
outcome = run_capped("scratch-small", batch_size=64, block_size=512,
                     memory_limit_bytes=int(sys.argv[1]), timeout_s=600)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"error": outcome.error, "rate": outcome.tokens_per_second, "peak": peak}))
"""


def test_a_shape_bigger_than_the_cap_runs_out_cleanly_without_growing_past_it() -> None:
    cap = 300 * MIB  # scratch-small at 64 x 512 needs about 6 GiB
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(cap)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["rate"] is None
    assert "ran out of the 0.3 GiB a calibration may use" in answer["error"], answer
    # What the child held before the cap (Python, torch, transformers: ~0.3-0.7 GiB resident)
    # plus the cap, far below the ~6 GiB the shape would have taken.
    assert answer["peak"] < 1536 * MIB, answer
