"""A run on several devices: torchrun with one process per device, DDP inside the Trainer.

On this CPU machine the devices are gloo processes: the same launch, the same entry point and
the same reporting path as two GPUs with NCCL.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Team, text_jsonl

STEPS = 6
BATCH = 2
BLOCK = 16


def test_a_two_process_run_trains_in_ddp_and_reports_each_step_and_checkpoint_once(
    team: Team, installation: Path
) -> None:
    from workers.tasks import train_run

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    config = {
        "max_steps": STEPS,
        "block_size": BLOCK,
        "batch_size": BATCH,
        "save_steps": 3,
        "eval_steps": 3,
        "devices": 2,
    }
    launched = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert launched.status_code == 201, launched.text
    run_id = int(launched.json()["id"])

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
    assert events.count("checkpoint saved at step 3") == 2  # the engine's line and the sink's
    assert events.count("data parallel on 2 processes (gloo): global batch 2 × 2 × 1 = 4") == 1

    # Both ranks trained: the token count is summed over them (two ranks' worth of tokens), and every rank's RNG state is
    # in the checkpoint (what an exact resume of a two-process run restores).
    checkpoint = installation / "artifacts" / "runs" / str(run_id) / "checkpoints" / "checkpoint-6"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    one_rank = STEPS * BATCH * BLOCK  # at most (the last block of an epoch is padded)
    assert one_rank < state["num_input_tokens_seen"] <= 2 * one_rank
    assert {p.name for p in checkpoint.glob("rng_state*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert not (checkpoint.parent / ".staging").exists()
