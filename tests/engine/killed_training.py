"""Trains a TrainConfig (JSON in argv[1]) in this process and SIGKILLs itself right after the
checkpoint at step argv[2] is reported: the way the OOM killer or a lost machine ends a run."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from workers.engine import NullCallbacks, TrainConfig, train


class KillAfterCheckpoint(NullCallbacks):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    raw = json.loads(sys.argv[1])
    paths = {"output_dir", "train_file"}
    config = TrainConfig(**{k: Path(v) if k in paths else v for k, v in raw.items()})
    train(config, KillAfterCheckpoint(int(sys.argv[2])))
    sys.exit("the run finished without being killed")


if __name__ == "__main__":
    main()
