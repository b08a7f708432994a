"""All nodes or none: a two-node run whose second node never starts does not train on one. The
claiming task's rendezvous gives up after LLMIDE_GANG_TIMEOUT_S, the run goes back to the queue
(its task re-sent), and once its automatic restarts are spent it fails saying why."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl

pytestmark = pytest.mark.e2e  # one torchrun waiting out a short rendezvous: ~30 s


def test_a_two_node_run_whose_other_node_never_joins_trains_nowhere_and_is_requeued(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings
    from workers.tasks import train_run

    for key, value in {
        "LLMIDE_MAX_CONCURRENT_RUNS": "2",
        "LLMIDE_NODE_ADDRESS": "127.0.0.1",
        "LLMIDE_GANG_TIMEOUT_S": "5",
        "LLMIDE_RUN_MAX_RESTARTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(30)).json()["id"]
    config = {"max_steps": 2, "block_size": 16, "nodes": 2}
    launched = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert launched.status_code == 201, launched.text
    run_id = int(launched.json()["id"])

    # No other worker takes the train_node task: the rendezvous never completes.
    assert train_run.apply(args=[run_id], task_id="gang-1").result == "interrupted"
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "interrupted" and run["step"] == 0, run
    assert team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json() == []
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert (
        "not all 2 nodes started within 5 s, so none trained; the run goes back to the "
        "queue (attempt 1 of 2)" in events
    )

    # The second try is the last one allowed: the run fails, naming what it needed.
    assert train_run.apply(args=[run_id], task_id="gang-2").result == "failed"
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "failed"
    assert run["error"].startswith("the run needs 2 nodes, and 2 times they did not all start")
