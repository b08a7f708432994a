"""Pausing a run, and a paused run as people see it: the run page, the runs list, the live
status and the APIs.

A pause (`POST /api/v1/runs/{id}/pause`, the run page's Pause button, or OpenAI's
`POST /v1/fine_tuning/jobs/{id}/pause`: one service function behind all three) ends the run
`cancelled` with `paused` set, meant to be resumed; only a cancel makes the stop final. So
every view says "paused" and offers Resume, and a run that was really cancelled still says
"cancelled".
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.api.test_run_lifecycle import _page, claim
from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Persona, Team


def pause(team: Team, run_id: int) -> None:
    paused = team.editor.post(f"/v1/fine_tuning/jobs/ftjob-{run_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"


def page_as(persona: Persona, path: str) -> str:
    """`path` as `persona`'s browser sees it (signed in through the login form)."""
    _sign_in(persona.client, persona)
    page = persona.client.get(path, headers=HTML)
    persona.client.cookies.clear()
    assert page.status_code == 200, page.text[:300]
    return page.text


def run_in_worker(run_id: int, task_id: str, outcome: list[str]) -> threading.Thread:
    """The real training task in a thread, its result appended to `outcome`."""
    from workers.tasks import train_run

    worker = threading.Thread(
        target=lambda: outcome.append(train_run.apply(args=[run_id], task_id=task_id).result)
    )
    worker.start()
    return worker


def wait_for_step(team: Team, run_id: int, step: int, worker: threading.Thread) -> None:
    deadline = time.monotonic() + 120
    while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < step:
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)


def finish(run_id: int, status: str) -> None:
    """The run's worker ends it with `status` (as at the end of its task)."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        run_execution.finish(session=session, run_id=run_id, status=RunStatus(status))


PAUSE_BUTTON = 'data-testid="pause-run"'


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
    worker = run_in_worker(run_id, "first", outcome)
    wait_for_step(team, run_id, 3, worker)
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


# --- pausing through the JSON API and the run page ------------------------------------------
def test_pausing_through_the_runs_api_stops_the_run_and_resume_continues_from_the_paused_step(
    team: Team, run_id: int
) -> None:
    from workers.tasks import train_run

    outcome: list[str] = []
    worker = run_in_worker(run_id, "first", outcome)
    wait_for_step(team, run_id, 3, worker)
    paused = team.editor.post(f"/api/v1/runs/{run_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True  # its worker stops at the end of the step
    worker.join(timeout=120)
    assert outcome == ["cancelled"]

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    paused_at = run["step"]
    assert (run["status"], run["paused"]) == ("cancelled", True) and 3 <= paused_at < 40
    assert "pause requested by editor@example.com" in events(team, run_id)
    page = _page(team, f"/runs/{run_id}")
    assert badge("paused") in page and 'data-testid="resume-run"' in page
    assert PAUSE_BUTTON not in page
    again = team.editor.post(f"/api/v1/runs/{run_id}/pause")  # pausing a paused run: a no-op
    assert again.status_code == 200 and again.json()["step"] == paused_at

    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["status"], resumed.json()["paused"]) == ("queued", False)
    assert train_run.apply(args=[run_id], task_id="again").result == "succeeded"
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] == 40
    assert f"resuming from step {paused_at} (attempt 1)" in events(team, run_id)


def test_a_queued_run_pauses_at_once(team: Team, run_id: int) -> None:
    paused = team.editor.post(f"/api/v1/runs/{run_id}/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["paused"]) == ("cancelled", True)
    assert badge("paused") in _page(team, f"/runs/{run_id}")


def test_a_viewer_cannot_pause_a_run(team: Team, run_id: int) -> None:
    claim(run_id)
    refused = team.viewer.post(f"/api/v1/runs/{run_id}/pause")
    assert refused.status_code == 403, refused.text
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["paused"] is False


def test_another_workspaces_run_or_an_unknown_id_is_not_found(team: Team, run_id: int) -> None:
    """Exactly alike, so ids cannot be probed."""
    claim(run_id)
    outsiders = team.outsider.post(f"/api/v1/runs/{run_id}/pause")
    assert outsiders.status_code == 404 and outsiders.json()["detail"] == f"run {run_id} not found"
    unknown = team.editor.post(f"/api/v1/runs/{run_id + 1000}/pause")
    assert (
        unknown.status_code == 404 and unknown.json()["detail"] == f"run {run_id + 1000} not found"
    )
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["paused"] is False


@pytest.mark.parametrize("ended", ["succeeded", "failed"])
def test_pausing_a_finished_run_is_a_conflict_that_says_why(
    team: Team, run_id: int, ended: str
) -> None:
    claim(run_id)
    finish(run_id, ended)
    refused = team.editor.post(f"/api/v1/runs/{run_id}/pause")
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == (
        f"run {run_id} is {ended}; only a queued or running run can be paused"
    )
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["paused"] is False


def test_pausing_a_run_being_cancelled_is_a_conflict(team: Team, run_id: int) -> None:
    claim(run_id)
    assert team.editor.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200
    refused = team.editor.post(f"/api/v1/runs/{run_id}/pause")
    assert refused.status_code == 409 and "being cancelled" in refused.json()["detail"]


def test_pausing_a_run_being_stopped_and_kept_is_a_conflict(team: Team, run_id: int) -> None:
    claim(run_id)
    assert team.editor.post(f"/api/v1/runs/{run_id}/stop").status_code == 200
    refused = team.editor.post(f"/api/v1/runs/{run_id}/pause")
    assert refused.status_code == 409 and "being stopped and kept" in refused.json()["detail"]
    assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["paused"] is False


def test_the_run_page_offers_pause_to_an_editor_of_a_running_run_and_not_to_a_viewer(
    team: Team, run_id: int
) -> None:
    assert PAUSE_BUTTON not in page_as(team.editor, f"/runs/{run_id}")  # queued: not yet
    claim(run_id)
    assert PAUSE_BUTTON in page_as(team.editor, f"/runs/{run_id}")
    assert PAUSE_BUTTON not in page_as(team.viewer, f"/runs/{run_id}")


def test_the_pause_button_pauses_the_run_and_makes_way_for_resume(team: Team, run_id: int) -> None:
    claim(run_id)
    client = team.editor.client
    token = _sign_in(client, team.editor)
    forged = client.post(f"/runs/{run_id}/pause", headers=HTML, follow_redirects=False)
    assert forged.status_code == 403  # a page write needs the CSRF token the form carries
    clicked = client.post(
        f"/runs/{run_id}/pause",
        headers=HTML,
        data={"csrf_token": token},
        follow_redirects=False,
    )
    client.cookies.clear()
    assert clicked.status_code == 303, clicked.text[:300]
    assert clicked.headers["location"] == f"/runs/{run_id}"
    page = page_as(team.editor, f"/runs/{run_id}")
    assert badge("pausing") in page and PAUSE_BUTTON not in page

    finish(run_id, "cancelled")  # its worker stops at the end of the step
    page = page_as(team.editor, f"/runs/{run_id}")
    assert badge("paused") in page and 'data-testid="resume-run"' in page
    assert PAUSE_BUTTON not in page
