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

Several machines (`nodes` > 1, docs/fleet.md): each node's task starts its own torchrun with
`--nnodes N` and a c10d rendezvous hosted by the task that claimed the run. The rendezvous is
the gang: every node waits until all N have joined (or `LLMIDE_GANG_TIMEOUT_S` passed, and then
none trains). Global rank 0 may land on any node, so it publishes the final model and writes
its result under an artifact key the claiming task reads (object storage or a shared disk).
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
    gang_incomplete: bool = False  # not every node joined the rendezvous: nobody trained


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet: torchrun's c10d rendezvous."""

    endpoint: str  # host:port of the store the claiming node's torchrun hosts
    run_key: str  # one per attempt ("run-7-attempt-2"): a late node never joins a newer one
    nodes: int
    is_host: bool
    timeout_s: float
    local_addr: str | None = None  # how the other nodes reach this one (LLMIDE_NODE_ADDRESS)


# What torchrun prints when the nodes did not all join in time (or the host gave up).
RENDEZVOUS_FAILURES = ("RendezvousTimeoutError", "RendezvousClosedError")


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
        rendezvous: Rendezvous | None = None,
        node_label: str = "",
        result_key: str | None = None,
    ) -> None:
        self.processes = processes
        self.cuda_devices = cuda_devices
        self.rendezvous = rendezvous
        self.result_key = result_key
        # Two nodes of one run may share a data folder (one machine, or a shared disk).
        name = f"{LAUNCH_DIR}-node-{node_label}" if rendezvous is not None else LAUNCH_DIR
        self.dir = Path(config.output_dir) / name
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / ERRORS_DIR).mkdir(parents=True)
        spec = {
            "run_id": run_id,
            "retention": retention,
            "config": config_to_dict(config),
            "result_key": result_key,
            "publish_final": rendezvous is not None,
        }
        (self.dir / SPEC_FILE).write_text(json.dumps(spec))
        self._process: subprocess.Popen[bytes] | None = None
        self.shutdown_requested = False

    def command(self) -> list[str]:
        where = ["--standalone"]
        rdzv = self.rendezvous
        if rdzv is not None:
            where = [
                f"--nnodes={rdzv.nodes}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv.endpoint}",
                f"--rdzv_id={rdzv.run_key}",
                f"--rdzv_conf=is_host={int(rdzv.is_host)},join_timeout={int(rdzv.timeout_s)}",
                "--max_restarts=0",  # a failed node fails the attempt; the queue retries it
            ]
            if rdzv.local_addr:
                where.append(f"--local_addr={rdzv.local_addr}")
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *where,
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
        if code == 0 and self.result_key is not None:
            # Rank 0 trained on another node: its result is in the artifact store.
            from app.services import artifacts

            stored = artifacts.fetched(self.result_key)
            if stored is not None:
                return Outcome(result=json.loads(stored.read_text()))
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
        if self.rendezvous is not None and any(name in output for name in RENDEZVOUS_FAILURES):
            return Outcome(
                error=f"not all {self.rendezvous.nodes} nodes joined within "
                f"{self.rendezvous.timeout_s:.0f} s",
                traceback=output,
                gang_incomplete=True,
            )
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
