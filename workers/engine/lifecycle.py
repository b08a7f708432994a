"""Trainer callbacks that end a run on their own: early stopping on an evaluation metric."""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from workers.engine.callbacks import TrainCallbacks


class EarlyStoppingOnMetric(TrainerCallback):
    """Stop when `metric` has not improved for `patience` evaluations in a row.

    Our own small callback rather than transformers' EarlyStoppingCallback: that one needs
    load_best_model_at_end and metric_for_best_model, which change what the final model is
    and how checkpoints rotate. Here the run simply ends after the current step; the final
    model is the last one, and a run stopped this way counts as succeeded.
    """

    def __init__(
        self, callbacks: TrainCallbacks, *, metric: str, patience: int, mode: str = "min"
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"early stopping mode must be min or max (got {mode!r})")
        self.callbacks = callbacks
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.patience = patience
        self.mode = mode
        self.best: float | None = None
        self.bad_evaluations = 0
        self.triggered = False

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        value = (metrics or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self._improved(value):
            self.best = value
            self.bad_evaluations = 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience and not self.triggered:
            self.triggered = True
            control.should_training_stop = True
            control.should_save = True
            self.callbacks.on_log(
                "info",
                f"early stopping at step {state.global_step}: {self.metric} has not improved "
                f"on {self.best:.4g} for {self.bad_evaluations} evaluations",
            )
