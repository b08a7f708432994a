"""Metric hooks cost nothing between logs: only logging steps read a tensor back to the host.

On a GPU every host read of a device tensor (.item(), float(t), `if t:` ...) waits for the
device to finish its queued work, a synchronisation. The CPU has no such wait, but the reads
are the same calls: this test counts those made by the Trainer's loop, Accelerate and the
engine, by the step they happen after, so it fails here for code that would sync there.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.test_engine import Recorder, sentences, write_jsonl
from workers.engine import TrainConfig, train
from workers.engine.config import DEFAULT_CUDA_LOGGING_STEPS

# Tensor methods that hand a value to Python: a GPU→CPU copy and a wait on a CUDA tensor.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")
# Where the per-step path of a run lives. torch's own optimizer reads are left out: AdamW keeps
# its step counters on the CPU unless it is capturable or fused.
WATCHED = (
    "transformers/trainer.py",
    "transformers/trainer_callback.py",
    "accelerate/",
    "workers/engine/",
)


@dataclass
class StepClock(Recorder):
    """A Recorder that also knows the last finished step, to file each host read under it."""

    reads: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def step(self) -> int:
        return self.progress[-1][0] if self.progress else 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> StepClock:
    recorder = StepClock()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, __original: Any = original, **kw: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if any(part in caller for part in WATCHED):
                recorder.reads[recorder.step].append(
                    f"{caller.rsplit('/', 2)[-1]}:{sys._getframe(1).f_lineno}"
                )
            return __original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return recorder


def test_with_logging_steps_k_only_every_kth_step_logs_and_reads_a_tensor(
    clock: StepClock, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in sentences(200)])
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=corpus,
        train_format="text",
        base_model="scratch-nano",
        batch_size=4,
        block_size=32,
        max_steps=9,
        save_steps=9,
        eval_split=0,  # evaluations read their loss back: none here, to see the steps alone
        logging_steps=3,
        device="cpu",
    )
    train(config, clock)

    assert [step for step, m in clock.metrics if "train_loss" in m] == [3, 6, 9]
    assert [step for step, _ in clock.progress] == list(range(1, 10)), "progress every step"
    # Reads filed under step s happened after step s ended: its log (if any) and step s + 1.
    quiet_steps = [s for s in range(1, 9) if s % 3]
    assert {s: clock.reads[s] for s in quiet_steps if clock.reads[s]} == {}
    assert clock.reads[3] and clock.reads[6], "a logging step reads the loss back"


def test_logging_defaults_to_every_step_on_the_cpu_and_less_often_on_a_gpu(
    tmp_path: Path,
) -> None:
    config = TrainConfig(output_dir=tmp_path, train_file=tmp_path / "x", train_format="text")
    assert config.logging_interval(on_gpu=False) == 1
    assert config.logging_interval(on_gpu=True) == DEFAULT_CUDA_LOGGING_STEPS > 1
    explicit = TrainConfig(
        output_dir=tmp_path, train_file=tmp_path / "x", train_format="text", logging_steps=5
    )
    assert explicit.logging_interval(on_gpu=True) == explicit.logging_interval(on_gpu=False) == 5
    with pytest.raises(ValueError, match="logging steps must be at least 1"):
        TrainConfig(
            output_dir=tmp_path, train_file=tmp_path / "x", train_format="text", logging_steps=0
        ).validate()
