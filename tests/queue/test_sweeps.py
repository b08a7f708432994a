"""Hyperparameter sweeps: validation, a grid sweep trained to the end, pruning, cancelling.

Trials train for real (scratch-nano, a few steps) in this process, as a worker's pool
process would run the task (`train_run.apply`); each finished trial's worker-side hook
advances the sweep, which launches the next trial through the real queue and broker.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Persona, Team, text_jsonl

BASE = {"max_steps": 4, "eval_steps": 2, "batch_size": 4, "block_size": 32, "eval_split": 0.2}


@pytest.fixture
def dataset_id(team: Team) -> int:
    return int(team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"])


def create(persona: Persona, dataset_id: int, **body: Any) -> Any:
    payload = {
        "dataset_id": dataset_id,
        "base_model": "scratch-nano",
        "config": BASE,
        **body,
    }
    return persona.post("/api/v1/sweeps", json=payload)


def train_waiting_trials(persona: Persona, sweep_id: int, rounds: int = 12) -> dict[str, Any]:
    """Play the worker: train each waiting trial until the sweep ends."""
    from workers.tasks import train_run

    for _ in range(rounds):
        sweep = persona.get(f"/api/v1/sweeps/{sweep_id}").json()
        if sweep["status"] != "running":
            return sweep
        waiting = [t for t in sweep["trials"] if t["status"] == "queued"]
        assert waiting, sweep
        for trial in waiting:
            train_run.apply(args=[trial["run_id"]])
    raise AssertionError("the sweep did not end")


def test_sweep_input_is_validated_with_messages_naming_the_field(
    team: Team, dataset_id: int
) -> None:
    unknown = create(team.editor, dataset_id, search_space={"colour": {"values": [1]}})
    assert unknown.status_code == 400 and "'colour' cannot be searched" in unknown.text
    ranged_grid = create(
        team.editor, dataset_id, search_space={"learning_rate": {"low": 1e-4, "high": 1e-2}}
    )
    assert ranged_grid.status_code == 400
    assert "a grid sweep needs a list of values for learning_rate" in ranged_grid.text
    out_of_range = create(team.editor, dataset_id, search_space={"batch_size": {"values": [4, 0]}})
    assert out_of_range.status_code == 400 and "0 is not a valid batch_size" in out_of_range.text
    viewer = create(team.viewer, dataset_id, search_space={"seed": {"values": [1]}})
    assert viewer.status_code == 403
    assert team.editor.get("/api/v1/sweeps").json()["items"] == []
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


def test_a_grid_sweep_runs_its_four_trials_and_the_best_has_the_lowest_validation_loss(
    team: Team, dataset_id: int
) -> None:
    created = create(
        team.editor,
        dataset_id,
        name="lr x seed",
        method="grid",
        search_space={"learning_rate": {"values": [1e-4, 3e-3]}, "seed": {"values": [1, 2]}},
        max_trials=10,
        parallelism=1,
    )
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["budget"] == 4 and len(sweep["trials"]) == 1  # parallelism 1

    done = train_waiting_trials(team.editor, sweep["id"])
    assert done["status"] == "succeeded", done
    trials = done["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert sorted((t["params"]["learning_rate"], t["params"]["seed"]) for t in trials) == [
        (1e-4, 1),
        (1e-4, 2),
        (3e-3, 1),
        (3e-3, 2),
    ]
    assert all(t["status"] == "succeeded" and t["value"] is not None for t in trials)
    lowest = min(trials, key=lambda t: t["value"])
    assert done["best_run_id"] == lowest["run_id"] and done["best"]["run_id"] == lowest["run_id"]
    # Each trial is an ordinary run with its own sampled config.
    run = team.editor.get(f"/api/v1/runs/{lowest['run_id']}").json()
    assert run["config"]["learning_rate"] == lowest["params"]["learning_rate"]
    # Only the best trial's model is registered, once the sweep has ended (not one per trial).
    versions = [v for m in team.editor.get("/api/v1/models").json() for v in m["versions"]]
    assert [v["run_id"] for v in versions] == [lowest["run_id"]]

    from tests.api.test_bounded_reads import _signed_in_page

    page = _signed_in_page(team, f"/sweeps/{sweep['id']}?param=learning_rate&log=true")
    assert page.count("<circle") == 4 and page.count('r="7"') == 1  # the best is larger
    assert f'href="/runs/{lowest["run_id"]}">Trial {lowest["trial"]}</a>' in page


def test_a_tpe_sweep_prunes_a_trial_worse_than_the_median_and_still_completes(
    team: Team, dataset_id: int
) -> None:
    from app.db.models import Run, RunStatus
    from app.db.session import session_scope
    from app.services import scheduler
    from app.services.runs import execution as run_execution
    from workers.tasks import train_run

    created = create(
        team.editor,
        dataset_id,
        method="tpe",
        search_space={"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}},
        max_trials=3,
        parallelism=1,
        prune=True,
        seed=5,
    )
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    for _ in range(2):  # two trials train to the end: the median has something to go by
        trials = team.editor.get(f"/api/v1/sweeps/{sweep_id}").json()["trials"]
        train_run.apply(args=[trials[-1]["run_id"]])
    sweep = team.editor.get(f"/api/v1/sweeps/{sweep_id}").json()
    assert [t["status"] for t in sweep["trials"]] == ["succeeded", "succeeded", "queued"]
    lr = sweep["trials"][2]["params"]["learning_rate"]
    assert 1e-4 <= lr <= 3e-3

    # The third trial's worker reports a far worse validation loss at step 2 than both
    # finished trials had there; the controller's next round prunes it.
    third = sweep["trials"][2]["run_id"]
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=third, task_id="pruning-test")
        run_execution.write_metrics(session=session, run_id=third, points=[(2, "eval_loss", 99.0)])
        session.commit()
    with session_scope() as session:
        scheduler.tick(session=session)
    with session_scope() as session:
        run = session.get(Run, third)
        assert run is not None and run.cancel_requested and run.sweep_pruned
        assert run_execution.cancel_requested(session=session, run_id=third)
        # The worker sees the flag within a step and ends the run as cancelled.
        run_execution.finish(session=session, run_id=third, status=RunStatus.cancelled)

    done = team.editor.get(f"/api/v1/sweeps/{sweep_id}").json()
    assert done["status"] == "succeeded"
    assert [t["status"] for t in done["trials"]] == ["succeeded", "succeeded", "pruned"]
    finished = [t for t in done["trials"] if t["value"] is not None]
    assert done["best_run_id"] == min(finished, key=lambda t: t["value"])["run_id"]
    events = team.editor.get(f"/api/v1/runs/{third}/events").json()
    assert any(
        "pruned by sweep" in e["message"] and "worse than the median" in e["message"]
        for e in events
    )


def test_cancelling_a_sweep_cancels_its_waiting_trials_and_launches_no_more(
    team: Team, dataset_id: int
) -> None:
    created = create(
        team.editor,
        dataset_id,
        method="random",
        search_space={"seed": {"low": 0, "high": 1000}},
        max_trials=5,
        parallelism=2,
    ).json()
    assert len(created["trials"]) == 2
    assert team.viewer.post(f"/api/v1/sweeps/{created['id']}/cancel").status_code == 403
    cancelled = team.editor.post(f"/api/v1/sweeps/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert {t["status"] for t in cancelled.json()["trials"]} == {"cancelled"}
    again = team.editor.post(f"/api/v1/sweeps/{created['id']}/cancel")
    assert again.status_code == 409
    elsewhere = team.outsider.get(f"/api/v1/sweeps/{created['id']}")
    assert elsewhere.status_code == 404


def test_a_sweep_stops_launching_when_the_workspace_quota_refuses_its_next_trial(
    team: Team, dataset_id: int
) -> None:
    from workers.tasks import train_run

    created = create(
        team.editor, dataset_id, search_space={"seed": {"values": [1, 2, 3]}}, parallelism=1
    ).json()
    quota = team.owner.client.put(
        "/api/v1/quotas", headers=team.owner.headers, json={"gpu_hours_per_month": 0}
    )
    assert quota.status_code == 200, quota.text
    refused = create(team.editor, dataset_id, search_space={"seed": {"values": [1]}})
    assert refused.status_code == 429 and "GPU-hours" in refused.json()["detail"]

    train_run.apply(args=[created["trials"][0]["run_id"]])
    done = team.editor.get(f"/api/v1/sweeps/{created['id']}").json()
    assert done["status"] == "succeeded" and len(done["trials"]) == 1
    assert done["best_run_id"] == created["trials"][0]["run_id"]
    assert done["error"].startswith("no more trials: trial 1 was refused: workspace")
    assert "GPU-hours this month" in done["error"]
