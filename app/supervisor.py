"""Runs the embedded product: web in this process, worker and inference as supervised children.

A child that dies is restarted with a back-off; Ctrl-C (or SIGTERM) stops every child.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from app.core.settings import Settings
from app.services.serving import metrics as serving_metrics

log = logging.getLogger("llmide.supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


def choose_inference_port(settings: Settings) -> int:
    """A port for this installation's inference server: the web port + 1 when it is free (8001
    beside the default 8000, as before), else any free one. Two installations on one machine
    (another LLMIDE_PORT) so never collide on, or talk to, the other's inference server."""
    for port in (settings.port + 1, 0):
        if not 0 <= port <= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((settings.inference_host, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError(f"no free port for the inference server on {settings.inference_host}")


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self._stopping = threading.Event()

    def add(self, name: str, argv: list[str]) -> None:
        self.children.append(Child(name, argv))

    def _start(self, child: Child) -> None:
        # The worker and inference processes keep their own registries: the web processes'
        # multiprocess dir is theirs alone (the inference series name models).
        env = {k: v for k, v in os.environ.items() if k != serving_metrics.MULTIPROC_ENV}
        child.process = subprocess.Popen(child.argv, env=env)
        child.started_at = time.monotonic()
        print(f"[llmide] started {child.name} (pid {child.process.pid})", flush=True)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for child in self.children:
                if child.process is None or child.process.poll() is None:
                    continue
                code = child.process.returncode
                backoff = min(30.0, 2.0 ** min(child.restarts, 5))
                if time.monotonic() - child.started_at > 60:
                    child.restarts = 0
                print(
                    f"[llmide] {child.name} exited with code {code}; restarting in {backoff:.0f} s",
                    flush=True,
                )
                if self._stopping.wait(backoff):
                    return
                child.restarts += 1
                self._start(child)

    def stop_children(self) -> None:
        self._stopping.set()
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 10
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        print("[llmide] all processes stopped", flush=True)

    def run_web(self, workers: int = 1) -> None:
        if workers > 1:
            # Made (or read) here, before the workers start: each must sign with the same key.
            self.settings.resolved_secret_key()
            # One /metrics for all of them, whichever process a scrape reaches.
            if not os.environ.get(serving_metrics.MULTIPROC_ENV):
                serving_metrics.use_multiprocess_dir(self.settings.data_dir)
        for child in self.children:
            self._start(child)
        watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        watcher.start()
        # SIGTERM (docker stop, kill) behaves like Ctrl-C: uvicorn shuts down, then the children.
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
        # `kill -USR1 <pid>` prints every thread's stack: how to see where a stuck stop hangs.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            print(f"[llmide] web on http://{self.settings.host}:{self.settings.port}", flush=True)
            uvicorn.run(
                "app.main:create_app",
                factory=True,
                host=self.settings.host,
                port=self.settings.port,
                workers=workers,
                log_level="info",
                proxy_headers=False,
                # Open websockets would otherwise hold a Ctrl-C for as long as browsers stay.
                timeout_graceful_shutdown=3,
            )
        finally:
            self.stop_children()
