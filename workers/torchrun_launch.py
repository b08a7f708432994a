"""Launching a data-parallel run: torchrun as a child of the Celery task, one process per device.

The task (parent) writes a launch spec, starts
`python -m torch.distributed.run --standalone --nproc_per_node N -m workers.torchrun_entry SPEC`
and waits. Every rank runs the engine's train() (the HF Trainer sets DDP up from torchrun's
environment); rank 0 reports through a RunReporter (metrics, logs, checkpoints, heartbeat,
cancel flag) and writes the result file; a rank that fails writes its traceback to errors/.
The parent reads one or the other when torchrun exits. A SIGTERM to the task is forwarded to
the ranks (not to torchrun, which would kill them): each rank wants to stop, the stop vote
ends all of them at the same step with a checkpoint, and the run is handed back as for a
single process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENTRY_MODULE = "workers.torchrun_entry"
LAUNCH_DIR = ".launch"  # under the run's output folder; replaced at every attempt
SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
ERRORS_DIR = "errors"
OUTPUT_FILE = "torchrun.log"
OUTPUT_TAIL_CHARS = 8000


def config_to_dict(config: Any) -> dict[str, Any]:
    """A TrainConfig as JSON values (paths as strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def config_from_dict(data: dict[str, Any]) -> Any:
    """The TrainConfig that config_to_dict wrote."""
    from workers.engine import TrainConfig

    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        if value is not None and "Path" in str(f.type):
            value = Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return TrainConfig(**values)


@dataclass(frozen=True)
class Outcome:
    """How a launch ended: rank 0's result, or the first failing rank's error."""

    result: dict[str, Any] | None = None
    error: str | None = None  # the exception line ("ValueError: ...")
    traceback: str = ""  # that rank's traceback (or torchrun's output when no rank wrote one)


class TorchrunLaunch:
    """One torchrun child running one run on `processes` devices."""

    def __init__(
        self,
        *,
        run_id: int,
        config: Any,
        retention: dict[str, Any],
        processes: int,
        cuda_devices: list[str] | None = None,
    ) -> None:
        self.processes = processes
        self.cuda_devices = cuda_devices
        self.dir = Path(config.output_dir) / LAUNCH_DIR
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / ERRORS_DIR).mkdir(parents=True)
        spec = {"run_id": run_id, "retention": retention, "config": config_to_dict(config)}
        (self.dir / SPEC_FILE).write_text(json.dumps(spec))
        self._process: subprocess.Popen[bytes] | None = None
        self.shutdown_requested = False

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.processes}",
            "-m",
            ENTRY_MODULE,
            str(self.dir / SPEC_FILE),
        ]

    def start(self) -> None:
        env = dict(os.environ)
        if self.cuda_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.cuda_devices)
        output = (self.dir / OUTPUT_FILE).open("wb")
        with output:
            # Its own session: a terminal's Ctrl-C or a signal to the worker's group reaches
            # the ranks only through forward_shutdown, never torchrun's kill-everything path.
            self._process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )

    def forward_shutdown(self) -> None:
        """Signal-safe enough for a SIGTERM handler: SIGTERM to every rank process."""
        self.shutdown_requested = True
        if self._process is None:
            return
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGTERM)

    def wait(self) -> Outcome:
        assert self._process is not None, "start() first"
        code = self._process.wait()
        result_path = self.dir / RESULT_FILE
        if code == 0 and result_path.is_file():
            return Outcome(result=json.loads(result_path.read_text()))
        return self._failure(code)

    def _failure(self, code: int) -> Outcome:
        # The first rank to fail holds the cause; the others usually fail after it (a peer
        # gone in the middle of a collective).
        errors = sorted(
            (self.dir / ERRORS_DIR).glob("rank-*.json"), key=lambda p: p.stat().st_mtime
        )
        if errors:
            first = json.loads(errors[0].read_text())
            return Outcome(error=first["error"], traceback=first["traceback"])
        output = (self.dir / OUTPUT_FILE).read_text(errors="replace")[-OUTPUT_TAIL_CHARS:]
        return Outcome(
            error=f"the training processes exited with code {code} without an error report",
            traceback=output,
        )


def _terminate_with_parent() -> None:
    """Linux: torchrun gets SIGTERM when the task's process dies (a worker killed with -9), and
    then stops its ranks, instead of training on as an orphan whose result nobody collects."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def write_error(spec_path: Path, rank: int, error: str, traceback_text: str) -> None:
    """A rank's failure, for the parent (whole or absent: the parent sorts them by mtime)."""
    _write_json_whole(
        spec_path.parent / ERRORS_DIR / f"rank-{rank}.json",
        {"error": error, "traceback": traceback_text},
    )


def write_result(spec_path: Path, result: dict[str, Any]) -> None:
    _write_json_whole(spec_path.parent / RESULT_FILE, result)


def _write_json_whole(target: Path, data: dict[str, Any]) -> None:
    """Written beside and renamed into place: the parent never reads half a file."""
    staged = target.with_suffix(".tmp")
    staged.write_text(json.dumps(data))
    staged.replace(target)
