"""A paused run as people see it: the run page, the runs list, the live status and the API.

A pause (OpenAI's `POST /v1/fine_tuning/jobs/{id}/pause`) ends the run `cancelled` with
`paused` set, meant to be resumed; only a cancel makes the stop final. So every view says
"paused" and offers Resume, and a run that was really cancelled still says "cancelled".
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.api.test_run_lifecycle import _page, claim
from tests.conftest import Team, text_jsonl


@pytest.fixture
def run_id(team: Team) -> int:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    launched = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset_id, "config": {"max_steps": 40, "block_size": 16}},
    )
    assert launched.status_code == 201, launched.text
    return int(launched.json()["id"])


def pause(team: Team, run_id: int) -> None:
    paused = team.editor.post(f"/v1/fine_tuning/jobs/ftjob-{run_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"


def badge(state: str, label: str | None = None) -> str:
    """The status badge as the run page and the runs list render it."""
    return f'data-status="{state}">{label or state}</span>'


def live_status(client: TestClient, team: Team, run_id: int) -> dict:
    """The status message the run page's websocket sends (what run.js shows)."""
    with client.websocket_connect(
        f"ws://127.0.0.1/ws/runs/{run_id}", headers=team.viewer.headers
    ) as ws:
        for _ in range(5):
            message = ws.receive_json()
            if message["type"] == "status":
                return message
    raise AssertionError("no status message")


def events(team: Team, run_id: int) -> list[str]:
    return [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]


def test_a_paused_run_shows_as_paused_on_its_page_with_resume_and_resumes_where_it_paused(
    team: Team, run_id: int, client: TestClient
) -> None:
    from workers.tasks import train_run

    outcome: list[str] = []
    worker = threading.Thread(
        target=lambda: outcome.append(train_run.apply(args=[run_id], task_id="first").result)
    )
    worker.start()
    deadline = time.monotonic() + 120
    while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < 3:
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    pause(team, run_id)
    worker.join(timeout=120)
    assert outcome == ["cancelled"]  # the lifecycle's stop; `paused` says it is meant to resume

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    paused_at = run["step"]
    assert run["status"] == "cancelled" and run["paused"] is True and 3 <= paused_at < 40
    page = _page(team, f"/runs/{run_id}")
    assert badge("paused") in page and ">cancelled</span>" not in page
    assert 'data-testid="resume-run"' in page
    assert 'data-testid="cancel-run">Cancel run</button>' in page  # a paused run may end for good
    assert "Resume continues from where it stopped" in page
    assert badge("paused") in _page(team, "/runs")
    status = live_status(client, team, run_id)
    assert (status["state"], status["label"]) == ("paused", "paused")
    assert "run paused" in events(team, run_id) and "run cancelled" not in events(team, run_id)

    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued" and resumed.json()["paused"] is False
    assert train_run.apply(args=[run_id], task_id="again").result == "succeeded"
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] == 40
    assert f"resuming from step {paused_at} (attempt 1)" in events(team, run_id)
    assert badge("succeeded") in _page(team, f"/runs/{run_id}")


def test_a_run_being_paused_says_pausing_and_cancelling_a_paused_run_shows_it_cancelled(
    team: Team, run_id: int, client: TestClient
) -> None:
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    claim(run_id)
    pause(team, run_id)
    page = _page(team, f"/runs/{run_id}")
    assert badge("pausing") in page
    assert 'data-testid="resume-run"' not in page  # not until its worker has stopped

    with session_scope() as session:  # its worker stops at the end of the step
        run_execution.finish(session=session, run_id=run_id, status=RunStatus.cancelled)
    assert badge("paused") in _page(team, f"/runs/{run_id}")
    assert badge("paused") in _page(team, f"/compare?run={run_id}")

    cancelled = team.editor.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["paused"]) == ("cancelled", False)
    page = _page(team, f"/runs/{run_id}")
    assert badge("cancelled") in page and ">paused</span>" not in page
    assert 'data-testid="cancel-run"' not in page
    assert badge("cancelled") in _page(team, "/runs")
    assert live_status(client, team, run_id)["state"] == "cancelled"


def test_a_cancelled_run_that_was_never_paused_still_shows_cancelled(
    team: Team, run_id: int, client: TestClient
) -> None:
    cancelled = team.editor.post(f"/api/v1/runs/{run_id}/cancel")
    assert (cancelled.json()["status"], cancelled.json()["paused"]) == ("cancelled", False)
    page = _page(team, f"/runs/{run_id}")
    assert badge("cancelled") in page and 'data-testid="resume-run"' in page
    assert badge("cancelled") in _page(team, "/runs")
    assert live_status(client, team, run_id)["state"] == "cancelled"
