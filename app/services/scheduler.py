"""What moves on when a run ends or time passes: sweeps decide their next trials, then the
queue fills the freed slots.

It sits above both: sweeps launch runs through `runs` (which queues them with `run_queue`),
and the queue itself knows nothing of sweeps, so no module calls back up into its caller.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Run
from app.services.runs import queue as run_queue
from app.services.sweeps import service as sweeps

log = logging.getLogger(__name__)


def on_run_finished(*, session: Session, run_id: int) -> None:
    """After a run ends (in the worker): its sweep decides on the next trial, then the freed
    slot goes to the next waiting run. Never fails the finishing run."""
    try:
        sweep_id = session.scalar(select(Run.sweep_id).where(Run.id == run_id))
        if sweep_id is not None:
            sweeps.advance(session=session, sweep_id=sweep_id)
    except Exception:
        log.exception("advancing the sweep of run %s failed; the next round retries", run_id)
        session.rollback()
    run_queue.dispatch_quietly(session=session)


def tick(*, session: Session) -> None:
    """The workers' periodic round: every running sweep (pruning, new trials), then dispatch."""
    try:
        sweeps.advance_all(session=session)
    except Exception:
        log.exception("advancing sweeps failed; the next round retries")
        session.rollback()
    run_queue.dispatch_quietly(session=session)
