"""Slows password guessing: a few failures per e-mail and client address, then a pause."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from app.core.errors import TooManyRequests

MAX_FAILURES = 5
WINDOW_S = 300.0

_failures: dict[str, deque[float]] = defaultdict(deque)
_lock = threading.Lock()


def _key(email: str, client: str) -> str:
    return f"{email.strip().lower()}|{client}"


def check(email: str, client: str) -> None:
    now = time.monotonic()
    with _lock:
        window = _failures[_key(email, client)]
        while window and now - window[0] > WINDOW_S:
            window.popleft()
        if len(window) >= MAX_FAILURES:
            wait = int(WINDOW_S - (now - window[0])) + 1
            raise TooManyRequests(f"too many failed sign-in attempts; try again in {wait} s")


def record_failure(email: str, client: str) -> None:
    with _lock:
        _failures[_key(email, client)].append(time.monotonic())


def record_success(email: str, client: str) -> None:
    with _lock:
        _failures.pop(_key(email, client), None)


def reset() -> None:
    with _lock:
        _failures.clear()
