"""A Celery pool process is forked from a main process whose threads (orphan sweeper, queue
ticks) hold pooled database connections: the child must open its own, never reuse the parent's
socket (two processes on one Postgres session corrupt each other's transactions)."""

from __future__ import annotations

import os
from pathlib import Path


def _dbapi_connection_id() -> int:
    from app.db.session import get_engine

    with get_engine().connect() as connection:
        return id(connection.connection.dbapi_connection)


def test_a_forked_pool_process_opens_its_own_database_connections(
    installation: Path, backend: str
) -> None:
    from celery.signals import worker_process_init

    import workers.celery_app  # noqa: F401  (connects the pool-process handlers)

    parents = _dbapi_connection_id()  # now pooled in this (the "main") process
    assert _dbapi_connection_id() == parents, "the pool hands the same connection back"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the pool process, as billiard forks it
        try:
            os.close(read)
            worker_process_init.send(sender=None)
            reused = _dbapi_connection_id() == parents
            os.write(write, b"reused" if reused else b"fresh")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.waitpid(child, 0)
    assert answer == b"fresh"
    assert _dbapi_connection_id() == parents, "the parent keeps its connection"
