"""The engine's only way out: the callbacks a caller implements to watch and steer a run."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

# Keys on_metrics sends. Training logs carry TRAIN_METRIC_KEYS, evaluations EVAL_METRIC_KEYS.
# trained_tokens: the running total of non-padding tokens (an OpenAI job's trained_tokens).
TRAIN_METRIC_KEYS = (
    "train_loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "epoch",
    "trained_tokens",
)
EVAL_METRIC_KEYS = ("eval_loss", "eval_perplexity")
# Preference runs (dpo, orpo, simpo, kto) add TRL's own measures to both, "/" spelled "_":
# rewards_chosen, rewards_rejected, rewards_margins, rewards_accuracies, logps_chosen,
# logps_rejected (and eval_rewards_chosen, ... on the held-out pairs).
PREFERENCE_METRIC_KEYS = (
    "rewards_chosen",
    "rewards_rejected",
    "rewards_margins",
    "rewards_accuracies",
    "logps_chosen",
    "logps_rejected",
)
# System metrics (workers/engine/system_metrics.py) come as their own report, at most once a
# second: a subset of SYSTEM_METRIC_KEYS (GPU keys and mfu only where they can be measured).


@runtime_checkable
class TrainCallbacks(Protocol):
    """What a run reports, called on the training thread.

    Implementations must return quickly (buffer, don't write to a database inline):
    the trainer waits for every call.
    """

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One training log (train_loss, learning_rate, grad_norm, tokens_per_second, epoch)
        or one evaluation (eval_loss, eval_perplexity), at an optimizer step."""

    def on_progress(self, step: int, total_steps: int) -> None:
        """After every optimizer step."""

    def on_log(self, level: str, message: str) -> None:
        """A human line for the run's log tail; level is "info", "warning" or "error"."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """A checkpoint directory was written; it loads with from_pretrained.

        metrics are the latest training and evaluation values at that step.
        """

    def should_stop(self) -> bool:
        """Polled after every step; True stops the run within a step, after a last checkpoint."""


class NullCallbacks:
    """Callbacks that ignore everything: for tests, benchmarks and scripts."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def on_progress(self, step: int, total_steps: int) -> None:
        return None

    def on_log(self, level: str, message: str) -> None:
        return None

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        return None

    def should_stop(self) -> bool:
        return False
