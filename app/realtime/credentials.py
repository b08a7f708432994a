"""Closes open websockets whose credential ended: a revoked token, a signed-out session.

A socket is authenticated once, at connect; without this it kept streaming a run after its
token was revoked or its browser signed out, until the run ended. Every open socket registers
its credential here (the SHA-256 the database keeps for it); one loop per web process checks
all registered credentials in two indexed queries every CHECK_INTERVAL_S and sets the event of
each socket whose credential no longer signs anyone in, so it closes within a second however
many sockets are open. The run handler also re-checks on every update it is about to send, so
nothing new reaches a socket after its credential ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db.session import session_scope
from app.services.workspaces import sessions, tokens

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Credential:
    """How a socket signed in: an API token or a browser session, by its stored hash."""

    kind: str  # "token" | "session"
    hash: str


def still_valid(session: Session, credentials: set[Credential]) -> set[Credential]:
    """Those of `credentials` that still sign someone in (one query per kind)."""
    by_kind: dict[str, set[str]] = defaultdict(set)
    for credential in credentials:
        by_kind[credential.kind].add(credential.hash)
    live = {
        "token": tokens.live_hashes(session=session, hashes=by_kind["token"]),
        "session": sessions.live_hashes(session=session, hashes=by_kind["session"]),
    }
    return {c for c in credentials if c.hash in live.get(c.kind, set())}


def _still_valid(credentials: set[Credential]) -> set[Credential]:
    with session_scope() as session:
        return still_valid(session, credentials)


class CredentialWatch:
    def __init__(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._watchers: dict[Credential, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def watch(self, credential: Credential) -> asyncio.Event:
        """An event set once `credential` stops signing anyone in."""
        ended = asyncio.Event()
        self._watchers[credential].add(ended)
        return ended

    def unwatch(self, credential: Credential, ended: asyncio.Event) -> None:
        watchers = self._watchers.get(credential)
        if watchers is not None:
            watchers.discard(ended)
            if not watchers:
                del self._watchers[credential]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="credential-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def check_now(self) -> None:
        watched = set(self._watchers)
        if not watched:
            return
        valid = await run_in_threadpool(_still_valid, watched)
        for credential in watched - valid:
            for ended in self._watchers.get(credential, ()):
                ended.set()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_now()
            except Exception as exc:  # the database briefly away: keep the sockets, try again
                log.warning("checking websocket credentials failed: %s", exc)
