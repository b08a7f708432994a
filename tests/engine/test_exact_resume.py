"""Exact resume: a training process killed with SIGKILL after a checkpoint, resumed in a fresh
process, continues on the next unseen batch and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_engine import Recorder, sentences, write_jsonl
from workers.engine import TrainConfig, train
from workers.engine.lifecycle import EarlyStoppingOnMetric

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 20
KILL_AT = 12  # mid-way through the second epoch: the sampler position matters


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    corpus = write_jsonl(
        tmp_path_factory.mktemp("data") / "train.jsonl", [{"text": s} for s in sentences(240)]
    )
    return TrainConfig(
        output_dir=tmp_path_factory.mktemp("unused"),
        train_file=corpus,
        train_format="text",
        base_model="scratch-tiny",
        learning_rate=2e-3,
        batch_size=8,
        block_size=32,
        max_steps=TOTAL_STEPS,
        save_steps=4,
        eval_steps=100,  # one evaluation at the end is enough here
        device="cpu",
        cpu_threads=1,  # same reduction order in both processes: bitwise-comparable maths
        seed=7,
    )


def train_losses_by_step(recorder: Recorder) -> dict[int, float]:
    return {step: m["train_loss"] for step, m in recorder.metrics if "train_loss" in m}


def test_a_run_killed_mid_epoch_resumes_on_the_next_batch_and_ends_with_the_same_weights(
    config: TrainConfig, tmp_path: Path
) -> None:
    # The run nobody interrupted.
    straight = Recorder()
    straight_result = train(replace(config, output_dir=tmp_path / "straight"), straight)
    assert straight_result.global_step == TOTAL_STEPS
    steps_per_epoch = TOTAL_STEPS / max(m["epoch"] for _, m in straight.metrics if "epoch" in m)
    assert steps_per_epoch < KILL_AT < 2 * steps_per_epoch, "the kill must land mid-epoch 2"

    # The same run in another process, killed with SIGKILL right after its step-12 checkpoint.
    killed_dir = tmp_path / "killed"
    raw = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    raw["output_dir"] = str(killed_dir)
    process = subprocess.run(
        [sys.executable, "-m", "tests.engine.killed_training", json.dumps(raw), str(KILL_AT)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    checkpoint = killed_dir / "checkpoints" / f"checkpoint-{KILL_AT}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (killed_dir / "checkpoints" / f"checkpoint-{KILL_AT + 4}").exists()

    # Resumed here, a fresh process as far as that run is concerned.
    resumed = Recorder()
    result = train(replace(config, output_dir=killed_dir, resume_from=checkpoint), resumed)

    assert result.global_step == TOTAL_STEPS
    assert [step for step, _ in resumed.progress] == list(range(KILL_AT + 1, TOTAL_STEPS + 1))
    # Same batches, same dropout, same learning rates: every resumed step's loss is the one
    # the uninterrupted run had at that step (a replayed or skipped batch would differ).
    expected = train_losses_by_step(straight)
    for step, loss in train_losses_by_step(resumed).items():
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), f"step {step}"

    # The token count (kept on the device between logs) survives the kill and the resume.
    def tokens_seen(run_dir: Path) -> int:
        state = run_dir / "checkpoints" / f"checkpoint-{TOTAL_STEPS}" / "trainer_state.json"
        return int(json.loads(state.read_text())["num_input_tokens_seen"])

    assert tokens_seen(killed_dir) == tokens_seen(tmp_path / "straight") > 0
    ours = load_file(str(result.final_dir / "model.safetensors"))
    theirs = load_file(str(straight_result.final_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-4, atol=1e-5, msg=name)


def test_early_stopping_ends_the_run_when_the_eval_metric_stops_improving(
    config: TrainConfig, tmp_path: Path
) -> None:
    # A learning rate this high makes the eval loss climb after the first evaluations.
    recorder = Recorder()
    result = train(
        replace(
            config,
            output_dir=tmp_path,
            learning_rate=0.5,
            max_steps=60,
            eval_steps=2,
            save_steps=100,
            early_stopping_patience=2,
        ),
        recorder,
    )
    assert result.global_step < 60
    assert not result.stopped, "early stopping is a normal end, not a stop request"
    assert any(m.startswith("early stopping at step") for _, m in recorder.logs), recorder.logs
    evals = recorder.eval_losses()
    best = min(evals)
    assert evals[-1] > best and evals[-2] > best
    assert (result.final_dir / "model.safetensors").is_file()


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    stopper = EarlyStoppingOnMetric(Recorder(), metric="accuracy", patience=2, mode="max")
    control, state = TrainerControl(), TrainerState()
    args = TrainingArguments(output_dir="/nonexistent", report_to=[])
    for value in (0.5, 0.6, 0.6, 0.55):
        stopper.on_evaluate(args, state, control, metrics={"eval_accuracy": value})
    assert control.should_training_stop and stopper.best == 0.6
