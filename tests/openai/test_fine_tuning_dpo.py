"""OpenAI `fine_tuning.jobs` with `method: {"type": "dpo"}`: a preference file becomes a DPO run
with its beta, validated like OpenAI, and the job's events carry the preference metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Team
from tests.openai.conftest import OpenAIFor, raw_json, run_id_of, upload_file
from tests.openai.openai_schema import assert_openai_error, assert_schema

PAIR = {
    "input": {"messages": [{"role": "user", "content": "Hello"}]},
    "preferred_output": [{"role": "assistant", "content": "Hi! How can I help?"}],
    "non_preferred_output": [{"role": "assistant", "content": "What."}],
}


@pytest.fixture(autouse=True)
def _both_databases(backend: str) -> None:
    """Every test here runs on SQLite and on Postgres."""


def dpo_file(team: Team) -> str:
    return upload_file(team.editor, json.dumps(PAIR) + "\n", filename="dpo.jsonl")


def _run_config(run_id: int) -> dict[str, Any]:
    from app.db.models import Run
    from app.db.session import session_scope

    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return dict(run.config)


def test_a_dpo_job_through_the_openai_package_queues_a_dpo_run_with_its_beta(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    raw = oa.fine_tuning.jobs.with_raw_response.create(
        model="scratch-tiny",
        training_file=dpo_file(team),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}},
    )
    job = raw_json(raw, "FineTuningJob")
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    config = _run_config(run_id_of(job["id"]))
    assert (config["task_type"], config["beta"], config["epochs"]) == ("dpo", 0.2, 2)
    again = oa.fine_tuning.jobs.retrieve(job["id"])
    assert again.method.type == "dpo" and again.method.dpo.hyperparameters.beta == 0.2


def test_an_auto_beta_is_dpos_default(team: Team) -> None:
    response = team.editor.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": dpo_file(team), "method": {"type": "dpo"}},
    )
    assert response.status_code == 200, response.text
    job = assert_schema(response.json(), "FineTuningJob")
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    assert _run_config(run_id_of(job["id"]))["beta"] is None


@pytest.mark.parametrize(
    ("method", "param", "words"),
    [
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}, "beta", "from 0 to 2"),
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "beta", "from 0 to 2"),
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": True}}}, "beta", "not True"),
        (
            {"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            "method.supervised",
            "method.type is 'dpo'",
        ),
        ({"type": "reinforcement"}, "method.type", "not supported"),
    ],
)
def test_dpo_settings_are_checked_like_openai(
    team: Team, method: dict[str, Any], param: str, words: str
) -> None:
    response = team.editor.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": dpo_file(team), "method": method},
    )
    error = assert_openai_error(response, 400)
    assert param in (error.get("param") or "") + error["message"]
    assert words in error["message"]


def test_a_dpo_job_needs_preference_pairs_and_a_supervised_job_refuses_them(team: Team) -> None:
    chat = upload_file(team.editor)
    wrong_data = team.editor.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": chat, "method": {"type": "dpo"}},
    )
    error = assert_openai_error(wrong_data, 400)
    assert error["param"] == "training_file" and "preference pairs" in error["message"]
    wrong_method = team.editor.post(
        "/v1/fine_tuning/jobs", json={"model": "scratch-tiny", "training_file": dpo_file(team)}
    )
    error = assert_openai_error(wrong_method, 400)
    assert error["param"] == "training_file" and '"type": "dpo"' in error["message"]


def test_a_dpo_jobs_metrics_events_carry_rewards_margins_and_accuracy(team: Team) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    response = team.editor.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": dpo_file(team), "method": {"type": "dpo"}},
    )
    job_id = response.json()["id"]
    values = {
        "train_loss": 0.6,
        "rewards_chosen": 0.4,
        "rewards_rejected": -0.3,
        "rewards_margins": 0.7,
        "rewards_accuracies": 1.0,
        "eval_rewards_margins": 0.5,
    }
    with session_scope() as session:
        run_execution.write_metrics(
            session=session,
            run_id=run_id_of(job_id),
            points=[(1, name, value) for name, value in values.items()],
        )
    events = team.editor.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    metrics = [e for e in events if e["type"] == "metrics"][0]["data"]
    assert metrics["rewards_margins"] == 0.7 and metrics["rewards_accuracies"] == 1.0
    assert metrics["eval_rewards_margins"] == 0.5


def test_a_run_launched_natively_on_pairs_shows_as_a_dpo_job(team: Team) -> None:
    pairs = team.editor.upload("pairs.jsonl", json.dumps(PAIR) + "\n").json()["id"]
    run = team.editor.post(
        "/api/v1/runs", json={"dataset_id": pairs, "base_model": "scratch-tiny", "config": {}}
    )
    assert run.status_code == 201, run.text
    job = team.editor.get(f"/v1/fine_tuning/jobs/ftjob-{run.json()['id']}")
    body = assert_schema(job.json(), "FineTuningJob")
    assert (
        body["method"]["type"] == "dpo" and body["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    )
