"""OpenAI fine-tuning job events: the run's log as `message` events and one `metrics` event per
training step, newest first, paged with `after` and `limit`."""

from __future__ import annotations

import pytest

from tests.conftest import Team
from tests.openai.conftest import OpenAIFor, create_job, raw_json, run_id_of, upload_file
from tests.openai.openai_schema import assert_openai_error, assert_schema


@pytest.fixture(autouse=True)
def _both_databases(backend: str) -> None:
    """Every test here runs on SQLite and on Postgres."""


def _report_like_the_worker(
    run_id: int, steps: dict[int, dict[str, float]], then_log: str | None = None
) -> None:
    """Metric points and log lines written by the worker's own service functions."""
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    for step, values in sorted(steps.items()):
        with session_scope() as session:
            run_execution.write_metrics(
                session=session,
                run_id=run_id,
                points=[(step, name, value) for name, value in values.items()],
            )
    if then_log is not None:
        with session_scope() as session:
            run_execution.add_event(session=session, run_id=run_id, message=then_log)


def _events(team: Team, job_id: str, query: str = "") -> dict:
    response = team.owner.get(f"/v1/fine_tuning/jobs/{job_id}/events{query}")
    assert response.status_code == 200, response.text
    return assert_schema(response.json(), "ListFineTuningJobEventsResponse")


def test_events_list_the_runs_log_as_message_events_newest_first(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    job = create_job(team.owner, upload_file(team.owner))
    oa.fine_tuning.jobs.cancel(job["id"])

    page = raw_json(
        oa.fine_tuning.jobs.with_raw_response.list_events(job["id"]),
        "ListFineTuningJobEventsResponse",
    )
    messages = [e["message"] for e in page["data"]]
    assert messages == [
        "cancellation requested by owner@example.com",
        "run created by owner@example.com; queued",
    ]
    assert all(e["type"] == "message" and e["level"] == "info" for e in page["data"])
    assert all(e["object"] == "fine_tuning.job.event" for e in page["data"])
    assert page["has_more"] is False
    assert [e.message for e in oa.fine_tuning.jobs.list_events(job["id"], limit=1)] == messages


def test_events_include_one_metrics_event_per_step_with_train_and_valid_loss(
    team: Team,
) -> None:
    job = create_job(team.owner, upload_file(team.owner))
    run_id = run_id_of(job["id"])
    _report_like_the_worker(
        run_id,
        {
            1: {"train_loss": 3.5, "learning_rate": 5e-4},
            2: {"train_loss": 3.0, "learning_rate": 4e-4, "eval_loss": 3.25},
            3: {"train_loss": 2.5, "learning_rate": 3e-4},
        },
        then_log="checkpoint saved at step 3",
    )

    data = _events(team, job["id"])["data"]
    assert [e["type"] for e in data] == ["message", "metrics", "metrics", "metrics", "message"]
    assert data[0]["message"] == "checkpoint saved at step 3"
    metrics = [e["data"] for e in data[1:4]]
    assert [m["step"] for m in metrics] == [3, 2, 1]
    assert [m["train_loss"] for m in metrics] == [2.5, 3.0, 3.5]
    assert "valid_loss" not in metrics[0] and "valid_loss" not in metrics[2]
    assert metrics[1]["valid_loss"] == metrics[1]["full_valid_loss"] == 3.25
    assert metrics[1]["learning_rate"] == pytest.approx(4e-4)
    assert data[2]["message"] == "Step 2: training loss=3.0000, validation loss=3.2500"
    assert data[1]["id"] == f"ftevent-{run_id}-step-3"


def test_events_page_across_messages_and_metrics_without_gaps_or_repeats(
    team: Team, openai_for: OpenAIFor
) -> None:
    job = create_job(team.owner, upload_file(team.owner))
    run_id = run_id_of(job["id"])
    _report_like_the_worker(run_id, {1: {"train_loss": 2.0}, 2: {"train_loss": 1.9}}, "eval")
    _report_like_the_worker(run_id, {3: {"train_loss": 1.8}}, "done")

    everything = _events(team, job["id"], "?limit=100")["data"]
    assert len(everything) == 6
    for limit in (1, 2, 4):
        seen: list[str] = []
        query = f"?limit={limit}"
        while True:
            page = _events(team, job["id"], query)
            seen += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            query = f"?limit={limit}&after={page['data'][-1]['id']}"
        assert seen == [e["id"] for e in everything]

    listed = openai_for(team.owner).fine_tuning.jobs.list_events(job["id"], limit=2)
    assert [e.id for e in listed] == [e["id"] for e in everything]


@pytest.mark.parametrize("after", ["nonsense", "ftevent-999999", "ftevent-1-step-1"])
def test_events_after_a_cursor_that_is_not_this_jobs_is_a_bad_request(
    team: Team, after: str
) -> None:
    job = create_job(team.owner, upload_file(team.owner))
    response = team.owner.get(f"/v1/fine_tuning/jobs/{job['id']}/events?after={after}")
    assert assert_openai_error(response, 400)["param"] == "after"
