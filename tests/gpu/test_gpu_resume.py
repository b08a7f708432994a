"""A GPU run whose worker is killed resumes on the GPU from its last checkpoint, every step once."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_full_path import corpus, wait_for
from tests.e2e.test_worker_crash import kill_worker_tree
from tests.gpu.support import product

STEPS = 1500  # long enough on a GPU that the kill lands mid-run, after the first checkpoint


def test_a_gpu_run_whose_worker_is_killed_resumes_on_the_gpu_without_gaps_or_duplicates(
    tmp_path: Path,
) -> None:
    with product(tmp_path / "data", LLMIDE_RUN_STALE_AFTER_S="3") as app:
        dataset = app.upload("c.jsonl", corpus(2000))
        run_id = app.launch(
            dataset, max_steps=STEPS, block_size=64, save_steps=100, logging_steps=1,
            eval_split=0.0,
        )  # fmt: skip
        wait_for(
            lambda: app.api.get(f"/api/v1/runs/{run_id}/checkpoints").json(),
            timeout=240,
            what="a first checkpoint",
            server=app.server,
        )
        assert app.run(run_id)["step"] < STEPS, "the run finished before the kill: raise STEPS"

        kill_worker_tree(app.server)

        run = app.finished(run_id, timeout=360)
        events = app.events(run_id)
        steps = [p["step"] for p in app.metric_points(run_id) if "train_loss" in p["values"]]
    assert run["status"] == "succeeded", run["error"]
    assert any("stopped answering" in m for m in events), events
    assert any(m.startswith("resuming from step") for m in events), events
    on_gpu = [m for m in events if m.startswith("training on")]
    assert len(on_gpu) >= 2 and all(m.startswith("training on cuda") for m in on_gpu), on_gpu
    assert steps == list(range(1, STEPS + 1)), "every step exactly once"
