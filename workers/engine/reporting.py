"""Translates the Trainer's events into the engine's TrainCallbacks, and relays stop requests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from workers.engine.callbacks import TrainCallbacks
from workers.engine.files import make_readable
from workers.engine.system_metrics import SystemSampler

# What TRL's preference trainers log beside the loss (rewards/chosen, logps/rejected, kl,
# ORPO's log_odds_ratio, ...): forwarded with "/" spelled "_" (rewards_chosen, and
# eval_rewards_chosen for the held-out pairs).
_PREFERENCE_KEYS = ("rewards/", "logps/", "logits/", "kl", "nll_loss", "log_odds")


def preference_metrics(logs: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The preference metrics of one TRL log (keys after `prefix`), named for the database."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is None or not name.startswith(_PREFERENCE_KEYS):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix + name.replace("/", "_")] = float(value)
    return out


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: every step after it would be wasted GPU time,
    and a model trained through it is garbage that must not reach the registry."""


def check_finite_loss(loss: float, step: int, precision: str) -> None:
    """Raise TrainingDiverged, with advice a person can act on, when `loss` is not finite."""
    if math.isfinite(loss):
        return
    advice = "lower the learning rate, or set max_grad_norm (gradient clipping)"
    if precision == "fp16":
        advice = "use bf16 or fp32 instead of fp16 (its range overflows), or " + advice
    raise TrainingDiverged(
        f"the training loss became {loss} at step {step}: the model diverged. Try: {advice}. "
        "Checkpoints saved before this step are kept."
    )


def perplexity(loss: float) -> float:
    """exp(loss), saturating to infinity instead of raising for a diverged run."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


class ReportingCallback(TrainerCallback):
    """Forwards metrics, progress, checkpoints and log lines; turns should_stop into a stop.

    tokens_per_second counts the tokens of the steps since the previous log over the time spent
    inside those steps, so evaluations and checkpoint writes don't show up as slow training.
    """

    def __init__(
        self,
        callbacks: TrainCallbacks,
        *,
        log_every: int,
        sampler: SystemSampler | None = None,
        perplexity: bool = True,
    ) -> None:
        self.callbacks = callbacks
        self.perplexity = perplexity
        self.sampler = sampler
        self._steps_since_log = 0
        self.log_every = max(1, log_every)
        self.stopped = False
        self.latest_train: dict[str, float] = {}
        self.latest_eval: dict[str, float] = {}
        self._tokens_at_last_log = 0
        self._busy_seconds = 0.0
        self._step_started: float | None = None
        # A data-parallel run: every rank's stop wish goes through this all-reduce (see
        # workers/engine/distributed.py); None when the run is one process.
        self.stop_vote: Callable[[bool], bool] | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # On resume the state (and its token count) comes from the checkpoint.
        self._tokens_at_last_log = state.num_input_tokens_seen
        if state.global_step:
            self.callbacks.on_log("info", f"resumed at step {state.global_step}/{state.max_steps}")

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._step_started = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._step_started is not None:
            self._busy_seconds += time.perf_counter() - self._step_started
            self._step_started = None
            self._steps_since_log += 1
        self.callbacks.on_progress(state.global_step, state.max_steps)
        # Reads host-side flags only (no tensor): this runs on every step, not just log steps.
        wants_to_stop = not self.stopped and self.callbacks.should_stop()
        if self.stop_vote is not None:
            wants_to_stop = self.stop_vote(wants_to_stop)
        if wants_to_stop and not self.stopped:
            self.stopped = True
            control.should_training_stop = True
            # Trainer saves after on_step_end when asked, so the stop leaves a resumable checkpoint.
            control.should_save = True
            self.callbacks.on_log("info", f"stop requested: stopping at step {state.global_step}")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
            check_finite_loss(float(logs["loss"]), step, precision)
            self._report_training(step, args, state, logs)
        elif "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            self.latest_eval = {"eval_loss": eval_loss}
            if self.perplexity:
                self.latest_eval["eval_perplexity"] = perplexity(eval_loss)
            # Task metrics (eval_accuracy, eval_f1_macro, ...), not the Trainer's timings.
            self.latest_eval.update(
                (key, float(value))
                for key, value in logs.items()
                if key.startswith("eval_")
                and "/" not in key
                and key not in self.latest_eval
                and not key.endswith(("_runtime", "_per_second"))
                and isinstance(value, int | float)
            )
            self.latest_eval.update(preference_metrics(logs, "eval_"))
            self.callbacks.on_metrics(step, dict(self.latest_eval))
            detail = ""
            if "eval_perplexity" in self.latest_eval:
                detail = f" perplexity {self.latest_eval['eval_perplexity']:.2f}"
            elif "eval_rewards_accuracies" in self.latest_eval:
                detail = f" preference accuracy {self.latest_eval['eval_rewards_accuracies']:.2f}"
            self.callbacks.on_log("info", f"eval at step {step}: loss {eval_loss:.4f}{detail}")

    def _report_training(
        self, step: int, args: TrainingArguments, state: TrainerState, logs: dict[str, float]
    ) -> None:
        # The Trainer sums the token count over all ranks: both rates are the whole run's.
        tokens = state.num_input_tokens_seen - self._tokens_at_last_log
        rate = tokens / self._busy_seconds if self._busy_seconds > 0 else 0.0
        global_batch = (
            (state.train_batch_size or 0) * args.gradient_accumulation_steps * args.world_size
        )
        samples = self._steps_since_log * global_batch
        samples_rate = samples / self._busy_seconds if self._busy_seconds > 0 else 0.0
        self._tokens_at_last_log = state.num_input_tokens_seen
        self._busy_seconds = 0.0
        self._steps_since_log = 0
        self.latest_train = {
            "train_loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "grad_norm": float(logs.get("grad_norm", math.nan)),
            "tokens_per_second": rate,
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
            # The running total (non-padding tokens, all ranks): a job's trained_tokens.
            "trained_tokens": float(state.num_input_tokens_seen),
            **preference_metrics(logs),
        }
        self.callbacks.on_metrics(step, dict(self.latest_train))
        if self.sampler is not None and self.sampler.due():
            # Its own report (separate keys), at most once a second: see system_metrics.
            system = self.sampler.sample(tokens_per_second=rate, samples_per_second=samples_rate)
            self.callbacks.on_metrics(step, system)
        if step % self.log_every == 0 or step == 1 or step >= state.max_steps:
            self.callbacks.on_log(
                "info", f"step {step}/{state.max_steps} loss {self.latest_train['train_loss']:.4f}"
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return  # one report (and one chmod) per checkpoint, from rank 0
        step = state.global_step
        if args.output_dir is None:  # our trainers always set one
            return
        path = Path(args.output_dir) / f"checkpoint-{step}"
        make_readable(path)
        self.callbacks.on_checkpoint(step, path, {**self.latest_train, **self.latest_eval})
        self.callbacks.on_log("info", f"checkpoint saved at step {step}")
