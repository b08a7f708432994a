"""Wakes websocket handlers when a run has new data.

With Redis, the worker publishes "run N has new data" and the hub wakes N's subscribers at once;
without Redis (embedded mode) the hub polls the newest row ids of subscribed runs. Either way the
handlers read the rows themselves from the database, the source of truth, so a missed wake-up
costs latency, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from app.core.live import RUN_UPDATES_CHANNEL
from app.db.models import MetricPoint, Run, RunEvent
from app.db.session import session_scope

log = logging.getLogger(__name__)


class RunUpdateHub:
    def __init__(self, *, redis_url: str | None, poll_interval_s: float) -> None:
        self.redis_url = redis_url
        self.poll_interval_s = poll_interval_s
        self._subscribers: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_seen: dict[int, tuple[int, int, int]] = {}
        self.redis_connected = False

    # --- subscriptions --------------------------------------------------------------------
    def subscribe(self, run_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._subscribers[run_id].add(event)
        return event

    def unsubscribe(self, run_id: int, event: asyncio.Event) -> None:
        subscribers = self._subscribers.get(run_id)
        if subscribers is not None:
            subscribers.discard(event)
            if not subscribers:
                del self._subscribers[run_id]
                self._last_seen.pop(run_id, None)

    def notify(self, run_id: int) -> None:
        for event in self._subscribers.get(run_id, ()):
            event.set()

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="hub-poll"))
        if self.redis_url:
            self._tasks.append(asyncio.create_task(self._redis_loop(), name="hub-redis"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # --- sources of wake-ups --------------------------------------------------------------
    async def _redis_loop(self) -> None:
        import redis.asyncio as aioredis

        backoff = 0.5
        while True:
            client = aioredis.Redis.from_url(str(self.redis_url), socket_connect_timeout=2)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(RUN_UPDATES_CHANNEL)
                    self.redis_connected = True
                    backoff = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            with contextlib.suppress(ValueError):
                                self.notify(int(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: poll until it is back
                log.warning("hub lost Redis (%s); polling the database until it returns", exc)
            finally:
                self.redis_connected = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _poll_loop(self) -> None:
        while True:
            # With Redis up, polling is only a safety net, so it runs rarely.
            interval = 2.0 if self.redis_connected else self.poll_interval_s
            await asyncio.sleep(interval)
            run_ids = list(self._subscribers)
            if not run_ids:
                continue
            try:
                latest = await run_in_threadpool(_latest_ids, run_ids)
            except Exception as exc:
                log.warning("hub poll failed: %s", exc)
                continue
            for run_id, marker in latest.items():
                if self._last_seen.get(run_id) != marker:
                    self._last_seen[run_id] = marker
                    self.notify(run_id)


def _latest_ids(run_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """For each run: newest metric id, newest event id and progress step (cheap, indexed)."""
    with session_scope() as session:
        metrics = dict(
            session.execute(
                select(MetricPoint.run_id, func.max(MetricPoint.id))
                .where(MetricPoint.run_id.in_(run_ids))
                .group_by(MetricPoint.run_id)
            ).all()
        )
        events = dict(
            session.execute(
                select(RunEvent.run_id, func.max(RunEvent.id))
                .where(RunEvent.run_id.in_(run_ids))
                .group_by(RunEvent.run_id)
            ).all()
        )
        steps = dict(session.execute(select(Run.id, Run.step).where(Run.id.in_(run_ids))).all())
    return {
        run_id: (metrics.get(run_id) or 0, events.get(run_id) or 0, steps.get(run_id) or 0)
        for run_id in run_ids
    }
