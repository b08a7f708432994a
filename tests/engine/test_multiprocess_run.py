"""A run on several devices: torchrun with one process per device, DDP inside the Trainer.

On this CPU machine the devices are gloo processes: the same launch, the same entry point and
the same reporting path as two GPUs with NCCL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import (
    Team,
    record_unloadable_checkpoint,
    resume_then_stop_and_keep,
    text_jsonl,
)

STEPS = 6
BATCH = 2
BLOCK = 16


def launch(team: Team, config: dict) -> int:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    launched = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert launched.status_code == 201, launched.text
    return int(launched.json()["id"])


def test_a_two_process_run_trains_in_ddp_and_reports_each_step_and_checkpoint_once(
    team: Team, installation: Path
) -> None:
    from workers.tasks import train_run

    config = {"max_steps": STEPS, "block_size": BLOCK, "batch_size": BATCH, "devices": 2}
    run_id = launch(team, {**config, "save_steps": 3, "eval_steps": 3})

    assert train_run.apply(args=[run_id], task_id="ddp").result == "succeeded"

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["step"] == STEPS, run
    points = team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
    train_steps = [p["step"] for p in points if "train_loss" in p["values"]]
    assert train_steps == list(range(1, STEPS + 1)), "each step once: rank 1 reports nothing"
    eval_steps = [p["step"] for p in points if "eval_loss" in p["values"]]
    assert eval_steps == [3, 6]
    checkpoints = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert [(c["step"], c["is_final"]) for c in checkpoints] == [(3, False), (6, True)]
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert events.count("checkpoint saved at step 3") == 1  # one line per checkpoint, not two
    assert events.count("data parallel on 2 processes (gloo): global batch 2 × 2 × 1 = 4") == 1

    # Both ranks trained: the token count is summed over them (two ranks' worth of tokens),
    # and every rank's RNG state is in the checkpoint (what an exact resume restores).
    checkpoint = installation / "artifacts" / "runs" / str(run_id) / "checkpoints" / "checkpoint-6"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    one_rank = STEPS * BATCH * BLOCK  # at most (the last block of an epoch is padded)
    assert one_rank < state["num_input_tokens_seen"] <= 2 * one_rank
    assert {p.name for p in checkpoint.glob("rng_state*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert not (checkpoint.parent / ".staging").exists()


def test_a_failing_rank_fails_the_run_with_its_error_and_traceback(
    team: Team, installation: Path
) -> None:
    """A real failure in every rank: the checkpoint to resume from is not loadable."""
    from workers.tasks import train_run

    run_id = launch(team, {"max_steps": 4, "block_size": BLOCK, "devices": 2})
    record_unloadable_checkpoint(installation, run_id, step=2)

    assert train_run.apply(args=[run_id], task_id="ddp-fails").result == "failed"

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "failed"
    assert run["error"].startswith("ValueError: cannot resume"), run["error"]
    assert "_checkpoint_to_resume" in run["error_detail"]
    assert "Traceback" not in run["error"]


def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes_on_two_processes(
    team: Team, installation: Path, tmp_path: Path
) -> None:
    """The worker's SIGTERM reaches the ranks (forwarded by the task), their stop vote ends
    all of them at the same step with a checkpoint; the next attempt resumes from it on two
    processes and ends on "stop and keep" (rank 0 reads that flag, the vote passes it on)."""
    import signal
    import subprocess
    import sys
    import time

    run_id = launch(
        team, {"max_steps": 400, "block_size": BLOCK, "batch_size": BATCH, "devices": 2}
    )
    log = (tmp_path / "task.log").open("w+")
    task = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.task_in_process", str(run_id)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < 3:
        assert task.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
        time.sleep(0.1)
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=120) == 0, Path(log.name).read_text()
    assert "task result: interrupted" in Path(log.name).read_text()

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "interrupted", run
    stopped_at = run["step"]
    assert 3 <= stopped_at < 400
    checkpoints = [c["step"] for c in team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()]
    assert checkpoints[-1] == stopped_at, "the shutdown saved a checkpoint at the step it stopped"
    folder = installation / "artifacts" / "runs" / str(run_id) / "checkpoints"
    assert {p.name for p in (folder / f"checkpoint-{stopped_at}").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }

    resume_then_stop_and_keep(team, run_id, past_step=stopped_at + 3, timeout_s=180)

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and stopped_at + 3 <= run["step"] < 400, run
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert f"resuming from step {stopped_at} (attempt 1)" in events
    assert f"resumed at step {stopped_at}/400" in events
    steps = [
        p["step"]
        for p in team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
        if "train_loss" in p["values"]
    ]
    assert steps == list(range(1, run["step"] + 1)), "every step exactly once, across attempts"


def test_a_run_on_n_gpus_gets_its_pool_process_gpu_and_the_next_ones(
    installation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings
    from workers.celery_app import gpus_for_child
    from workers.tasks import _pinned_gpus

    assert gpus_for_child(1, ["0", "1", "2", "3"], 2) == ["1", "2"]
    assert gpus_for_child(3, ["0", "1", "2", "3"], 2) == ["3", "0"]
    assert _pinned_gpus(2) is None, "no LLMIDE_WORKER_GPUS: no pinning"
    monkeypatch.setattr(get_settings(), "worker_gpus", "4,5")
    assert _pinned_gpus(2) == ["4", "5"]  # this (non-pool) process counts as index 0
    with pytest.raises(ValueError, match="asks for 3 devices but its worker has 2 GPU"):
        _pinned_gpus(3)
