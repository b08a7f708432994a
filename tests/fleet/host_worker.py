"""One worker host of a fleet test: runs a training task in this process (as a pool process
would) with whatever LLMIDE_* settings it was given (its own data folder, the shared database and
object store). `python -m tests.fleet.host_worker RUN_ID [KILL_AT_STEP]`: with a step, the process
SIGKILLs itself right after that checkpoint is recorded, as a lost machine ends a run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    from workers import metrics_sink
    from workers.tasks import train_run

    run_id = int(sys.argv[1])
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if kill_at is not None:
        recorded = metrics_sink.RunReporter.on_checkpoint

        def on_checkpoint_then_die(
            self: metrics_sink.RunReporter, step: int, path: Path, metrics: dict[str, float]
        ) -> None:
            recorded(self, step, path, metrics)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        metrics_sink.RunReporter.on_checkpoint = on_checkpoint_then_die  # type: ignore[method-assign]
    result = train_run.apply(args=[run_id], task_id=f"fleet-{os.getpid()}")
    print(f"task result: {result.result}", flush=True)


if __name__ == "__main__":
    main()
