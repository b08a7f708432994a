"""Apply Alembic migrations programmatically (CLI `llmide migrate`, `serve`, tests)."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from app.db.session import make_engine

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def wait_for_database(url: str, *, attempts: int = 30, delay_s: float = 1.0) -> None:
    """Wait for the database to accept connections, with a clear message instead of a crash loop."""
    engine = make_engine(url)
    last_error: Exception | None = None
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except Exception as exc:  # any driver error means "not ready yet"
                last_error = exc
                print(f"database not reachable yet (attempt {attempt}/{attempts}): {exc}")
                time.sleep(delay_s)
    finally:
        engine.dispose()
    raise SystemExit(f"could not connect to the database at {url!r}: {last_error}")


def upgrade_to_head(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
