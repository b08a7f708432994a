"""The training run's configuration: everything the engine needs, checked before any work."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from workers.engine.scratch import KNOWN_BASE_MODELS

DATA_FORMATS = ("text", "chat", "txt")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# A byte-level BPE needs its 256 byte symbols plus the special tokens before any merge.
MIN_VOCAB_SIZE = 300
MAX_VOCAB_SIZE = 65536


@dataclass(frozen=True)
class TrainConfig:
    """One training run, as the Celery task builds it from the database row.

    Paths are the run's own artifact folders; the engine writes only under output_dir.
    """

    output_dir: Path  # checkpoints in output_dir/checkpoints/checkpoint-{step}, model in /final
    train_file: Path  # JSONL of {"text"} or {"messages"} rows, or plain .txt
    train_format: str  # "text" | "chat" | "txt"
    validation_file: Path | None = None
    validation_format: str | None = None  # None: same as train_format
    base_model: str = "scratch-tiny"
    learning_rate: float = 5e-4
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int | None = None  # when set, overrides epochs
    eval_split: float = 0.1  # share of train held out when there is no validation_file (0 = none)
    seed: int = 42
    block_size: int = 128
    eval_steps: int | None = None  # None: about 10 evaluations per run
    save_steps: int | None = None  # None: about 4 checkpoints per run
    resume_from: Path | None = None  # a checkpoint dir; restores optimizer, scheduler and RNG
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    vocab_size: int = 4096
    cpu_threads: int | None = None  # torch threads on CPU; None: all available CPUs but one
    # None keeps every checkpoint: each one reported through on_checkpoint stays on disk for
    # the registry. A number deletes the oldest beyond it (Trainer's save_total_limit).
    keep_checkpoints: int | None = None
    # Early stopping: end the run when this evaluation metric has not improved (lower for
    # "min", higher for "max") for `patience` evaluations. None: off.
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "eval_loss"
    early_stopping_mode: str = "min"

    def validate(self) -> None:
        """Raise ValueError listing every out-of-range value, in words a user can act on."""
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.train_format not in DATA_FORMATS:
            problems.append(
                f"train_format must be one of {', '.join(DATA_FORMATS)} (got {self.train_format!r})"
            )
        if self.validation_format is not None and self.validation_format not in DATA_FORMATS:
            problems.append(
                f"validation_format must be one of {', '.join(DATA_FORMATS)} "
                f"(got {self.validation_format!r})"
            )
        spec = KNOWN_BASE_MODELS.get(self.base_model)
        if spec is None:
            problems.append(
                f"unknown base model {self.base_model!r}; available: "
                + ", ".join(sorted(KNOWN_BASE_MODELS))
            )
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            problems.append(
                f"learning rate must be greater than 0 and at most 1 (got {self.learning_rate})"
            )
        if not 1 <= self.batch_size <= 4096:
            problems.append(f"batch size must be between 1 and 4096 (got {self.batch_size})")
        if self.max_steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            problems.append(f"epochs must be greater than 0 (got {self.epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max steps must be at least 1 (got {self.max_steps})")
        if not 0 <= self.eval_split <= 0.5:
            problems.append(f"eval split must be between 0 and 0.5 (got {self.eval_split})")
        if self.seed < 0:
            problems.append(f"seed must not be negative (got {self.seed})")
        max_block = spec.context_length if spec else 1024
        if not 8 <= self.block_size <= max_block:
            problems.append(
                f"block size must be between 8 and {max_block} for {self.base_model} "
                f"(got {self.block_size})"
            )
        if self.early_stopping_mode not in ("min", "max"):
            problems.append(
                f"early stopping mode must be min or max (got {self.early_stopping_mode!r})"
            )
        for name in (
            "eval_steps",
            "save_steps",
            "keep_checkpoints",
            "cpu_threads",
            "early_stopping_patience",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name.replace('_', ' ')} must be at least 1 (got {value})")
        if not _DEVICE_PATTERN.match(self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if not MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE:
            problems.append(
                f"vocabulary size must be between {MIN_VOCAB_SIZE} and {MAX_VOCAB_SIZE} "
                f"(got {self.vocab_size})"
            )
        return problems

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.output_dir / "final"
