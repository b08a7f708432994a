"""One rank of a data-parallel run (started by torchrun; see workers/torchrun_launch.py).

Rank 0 reports through a RunReporter like a single-process task; the other ranks train
silently. Every rank turns SIGTERM into a wish to stop, which the engine's stop vote turns
into one stop for all, after a checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from workers.engine.callbacks import NullCallbacks
from workers.torchrun_launch import config_from_dict, write_error, write_result


class FollowerCallbacks(NullCallbacks):
    """A rank other than 0: reports nothing, wants to stop once SIGTERM arrived."""

    def __init__(self) -> None:
        self.shutdown = threading.Event()

    def should_stop(self) -> bool:
        return self.shutdown.is_set()


def main(argv: list[str]) -> int:
    from workers.engine import train
    from workers.engine.device import process_world

    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    world = process_world()
    reporter: Any = None
    if world.is_main:
        from workers.metrics_sink import RunReporter

        reporter = RunReporter(spec["run_id"], retention=spec["retention"])
        callbacks: Any = reporter
        signal.signal(signal.SIGTERM, lambda signum, frame: reporter.request_shutdown())
    else:
        callbacks = FollowerCallbacks()
        signal.signal(signal.SIGTERM, lambda signum, frame: callbacks.shutdown.set())
    try:
        result = train(config_from_dict(spec["config"]), callbacks)
    except BaseException as exc:
        write_error(spec_path, world.rank, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if reporter is not None:
            reporter.close()
        return 1
    if reporter is not None:
        reporter.close()
        outcome = {
            "final_dir": str(result.final_dir),
            "global_step": result.global_step,
            "metrics": result.metrics,
            "stopped": result.stopped,
            "stop_reason": reporter.stop_reason if result.stopped else None,
            "report": result.report,
        }
        if spec.get("publish_final") or spec.get("result_key"):
            # Several nodes: this rank may not be on the claiming task's machine, so the final
            # model goes to the store from here and the result under a key it can read.
            from app.services import artifacts

            final_key = artifacts.key_for(result.final_dir)
            artifacts.publish(final_key)
            outcome |= {"final_key": final_key, "published": True}
        write_result(spec_path, outcome)
        if spec.get("result_key"):
            write_result_key(spec["result_key"], outcome)
    return 0


def write_result_key(key: str, outcome: dict[str, Any]) -> None:
    """The result where every node's task can read it: under the store, whole or absent."""
    import os

    from app.services import artifacts

    fd, tmp = artifacts.temp_file(".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(outcome, handle)
    artifacts.commit_file(tmp, key)  # moved into place, then published


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
