"""Buffers the engine's reports and writes them to the database in small batches.

The trainer never waits on the database or the browser: reports go into a buffer, a background
thread flushes it at most every FLUSH_INTERVAL_S and publishes a wake-up on Redis (if any).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from app.core.live import FLUSH_INTERVAL_S, RUN_UPDATES_CHANNEL
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.services import artifacts
from app.services.runs import execution as run_execution

log = logging.getLogger(__name__)


class RunReporter:
    """Implements the engine's TrainCallbacks protocol for one run."""

    def __init__(self, run_id: int, retention: dict[str, Any] | None = None) -> None:
        self.run_id = run_id
        # keep_last_checkpoints / keep_best_metric / keep_best_mode from the run's config.
        self.retention = retention or {}
        self._lock = threading.Lock()
        # One flush at a time (the flush thread and on_checkpoint both flush): a run's metric rows
        # then commit in id order, which the live view's id cursor relies on. Two overlapping
        # transactions on Postgres could commit the higher ids first, and a websocket reading in
        # between would step over the lower ones for good.
        self._flush_lock = threading.Lock()
        self._publish_failing = False
        self._points: list[run_execution.MetricReport] = []
        self._events: list[tuple[str, str]] = []
        self._progress: tuple[int, int | None] | None = None
        self._cancel = False
        self._keep = False  # "stop and keep" asked from the page or API
        self._shutdown = threading.Event()  # the worker is shutting down (SIGTERM)
        self._last_heartbeat = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._redis = self._connect_redis()
        self._thread = threading.Thread(target=self._loop, name=f"run-{run_id}-flush", daemon=True)
        self._thread.start()

    @staticmethod
    def _connect_redis() -> Any:
        url = get_settings().redis_url
        if not url:
            return None
        import redis

        return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    # --- TrainCallbacks -------------------------------------------------------------------
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        at = utcnow()  # when the step ended: the batch reaches the database later
        with self._lock:
            self._points.extend((step, name, value, at) for name, value in metrics.items())
        self._wake.set()

    def on_progress(self, step: int, total_steps: int) -> None:
        with self._lock:
            self._progress = (step, total_steps)

    def on_log(self, level: str, message: str) -> None:
        with self._lock:
            self._events.append((level, message))
        self._wake.set()

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.flush()
        key = artifacts.key_for(path)
        # In the shared store before it is recorded: a run resumed on another host only ever
        # finds checkpoints whose files it can fetch (docs/fleet.md). Nothing to do without one.
        artifacts.publish(key)
        with session_scope() as session:
            run_execution.record_checkpoint(
                session=session,
                run_id=self.run_id,
                step=step,
                storage_key=key,
                metrics=metrics,
            )
            # The engine logs "checkpoint saved at step N" itself: one line, not two.
            doomed = run_execution.apply_retention(
                session=session,
                run_id=self.run_id,
                keep_last=self.retention.get("keep_last_checkpoints"),
                best_metric=self.retention.get("keep_best_metric"),
                best_mode=self.retention.get("keep_best_mode") or "min",
            )
        # Marked in the database first: a crash between the two leaves files nobody offers,
        # never an offered checkpoint without files.
        for doomed_key in doomed:
            try:
                artifacts.delete(doomed_key)  # here and in the shared store
            except Exception:  # a store hiccup leaves an unoffered copy, never stops training
                log.exception("could not delete checkpoint %s of run %s", doomed_key, self.run_id)

    def should_stop(self) -> bool:
        return self._cancel or self._keep or self._shutdown.is_set()

    def request_shutdown(self) -> None:
        """Called from a SIGTERM handler: stop after this step with a checkpoint, so the run
        can resume on another worker without losing work. Only sets a flag (signal-safe)."""
        self._shutdown.set()

    @property
    def stop_reason(self) -> str | None:
        """Why should_stop() said yes: "cancel", "shutdown" or "keep" (None: it did not).

        Cancel wins over the others: a person who cancelled does not want the model kept.
        """
        if self._cancel:
            return "cancel"
        if self._shutdown.is_set():
            return "shutdown"
        if self._keep:
            return "keep"
        return None

    # --- flushing -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._stop.wait(FLUSH_INTERVAL_S)  # coalesce a burst of reports into one write
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a transient DB error must not kill training; retry next tick
                log.exception("flushing metrics of run %s failed; will retry", self.run_id)

    def flush(self) -> None:
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            points, self._points = self._points, []
            events, self._events = self._events, []
            progress, self._progress = self._progress, None
        try:
            with session_scope() as session:
                run_execution.write_metrics(session=session, run_id=self.run_id, points=points)
                for level, message in events:
                    run_execution.add_event(
                        session=session, run_id=self.run_id, message=message, level=level
                    )
                if progress is not None:
                    run_execution.update_progress(
                        session=session,
                        run_id=self.run_id,
                        step=progress[0],
                        total_steps=progress[1],
                    )
                    self._last_heartbeat = time.monotonic()
                elif time.monotonic() - self._last_heartbeat > run_execution.HEARTBEAT_EVERY_S:
                    # Still alive during a long evaluation or checkpoint save.
                    run_execution.heartbeat(session=session, run_id=self.run_id)
                    self._last_heartbeat = time.monotonic()
                self._cancel, self._keep = run_execution.stop_flags(
                    session=session, run_id=self.run_id
                )
        except Exception:
            with self._lock:  # put them back so nothing is lost
                self._points[:0] = points
                self._events[:0] = events
            raise
        if (points or events or progress) and self._redis is not None:
            self._publish()

    def _publish(self) -> None:
        try:
            self._redis.publish(RUN_UPDATES_CHANNEL, str(self.run_id))
        except Exception as exc:  # the hub falls back to polling; never block training on Redis
            # Once per outage, not ten times a second.
            if not self._publish_failing:
                log.warning(
                    "could not publish updates of run %s to Redis (%s); the web polls the "
                    "database until Redis is back",
                    self.run_id,
                    exc,
                )
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("publishing updates of run %s to Redis again", self.run_id)
            self._publish_failing = False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
