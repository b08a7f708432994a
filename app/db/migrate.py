"""Apply Alembic migrations programmatically (CLI `llmide migrate`, `serve`, tests)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text

from app.db.session import make_engine

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def _displayed(url: str) -> str:
    """The URL as it may appear in a log: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing that could be a secret
        return "the configured database URL"


def _reason(exc: Exception) -> str:
    """The driver's own first line ("connection refused", "password authentication failed"),
    without SQLAlchemy's wrapping, the SQL or the multi-line hints."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def wait_for_database(url: str, *, attempts: int = 30, delay_s: float = 1.0) -> None:
    """Wait for the database to accept connections, with a clear message instead of a crash loop.

    One line per failed attempt, at most `attempts` of them, then SystemExit (status 1) with a
    final message: no traceback, and nothing for a process manager to restart in a tight loop.
    """
    engine = make_engine(url)
    where = _displayed(url)
    reason = "no attempt made"
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except Exception as exc:  # any driver error means "not ready yet"
                reason = _reason(exc)
                print(
                    f"database at {where} not reachable (attempt {attempt}/{attempts}): {reason}",
                    file=sys.stderr,
                    flush=True,
                )
                if attempt < attempts:
                    time.sleep(delay_s)
    finally:
        engine.dispose()
    raise SystemExit(
        f"error: could not connect to the database at {where} after {attempts} attempts "
        f"({reason}); check LLMIDE_DATABASE_URL and that the database server is running"
    )


def upgrade_to_head(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
