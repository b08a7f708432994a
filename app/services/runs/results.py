"""A run's step metrics as the CSV file OpenAI attaches to a finished fine-tuning job."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import MetricPoint

# OpenAI's columns first (what its clients and notebooks read), then this server's extras.
# Accuracy columns stay empty: the training loop does not measure token accuracy.
COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "learning_rate",
    "trained_tokens",
)
_SOURCES = {
    "train_loss": "train_loss",
    "valid_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "trained_tokens": "trained_tokens",
}


def has_metrics(*, session: Session, run_id: int) -> bool:
    return (
        session.scalar(select(MetricPoint.id).where(MetricPoint.run_id == run_id).limit(1))
        is not None
    )


def metrics_csv(*, session: Session, run_id: int) -> bytes:
    """One row per step that has any of the columns' metrics, in step order."""
    rows = session.execute(
        select(MetricPoint.step, MetricPoint.name, MetricPoint.value)
        .where(MetricPoint.run_id == run_id, MetricPoint.name.in_(_SOURCES.values()))
        .order_by(MetricPoint.step)
    )
    by_step: dict[int, dict[str, float]] = {}
    for step, name, value in rows:
        by_step.setdefault(step, {})[name] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for step, values in by_step.items():
        row: list[str | int | float] = [step]
        for column in COLUMNS[1:]:
            found = values.get(_SOURCES.get(column, ""))
            if found is None:
                row.append("")
            elif column == "trained_tokens":
                row.append(int(found))
            else:
                row.append(round(found, 6))
        writer.writerow(row)
    return out.getvalue().encode()
