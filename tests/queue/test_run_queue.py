"""The run queue: priorities, fair share across workspaces, reordering, quotas.

The dispatcher is the real one, on the real database (SQLite and Postgres) and the real broker
(the embedded SQLAlchemy transport, or Redis): no worker takes the tasks, so every sent run
keeps its GPU slot and each test decides exactly when a slot frees up.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Persona, Team, text_jsonl


def launch(persona: Persona, dataset_id: int, name: str, priority: str | None = None) -> int:
    body: dict[str, Any] = {"dataset_id": dataset_id, "name": name, "config": {"max_steps": 2}}
    if priority is not None:
        body["priority"] = priority
    created = persona.post("/api/v1/runs", json=body)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def queue(persona: Persona) -> dict[str, Any]:
    answer = persona.get("/api/v1/queue")
    assert answer.status_code == 200, answer.text
    return answer.json()


def waiting_names(persona: Persona) -> list[str]:
    return [run["name"] for run in queue(persona)["waiting"]]


def active_names(persona: Persona) -> list[str]:
    return [run["name"] for run in queue(persona)["active"]]


def set_slots(monkeypatch: pytest.MonkeyPatch, slots: int) -> None:
    from app.core.settings import get_settings

    monkeypatch.setenv("LLMIDE_MAX_CONCURRENT_RUNS", str(slots))
    get_settings.cache_clear()


def device() -> str:
    """What the queue says its slots are of on this machine ("CPU" here, "GPU" on a GPU host)."""
    from app.services.runs.queue import training_device

    return training_device()


def dispatch() -> list[int]:
    from app.db.session import session_scope
    from app.services.runs import queue as run_queue

    with session_scope() as session:
        return run_queue.dispatch(session=session)


def put_quotas(persona: Persona, **body: Any) -> Any:
    return persona.client.put("/api/v1/quotas", headers=persona.headers, json=body)


def audit_actions() -> list[str]:
    from sqlalchemy import select

    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        return list(session.scalars(select(AuditEvent.action)))


@pytest.fixture
def datasets(team: Team) -> tuple[int, int]:
    ours = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    theirs = team.outsider.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    return int(ours), int(theirs)


def test_a_free_slot_goes_to_the_workspace_with_fewest_active_runs_then_to_priority(
    team: Team, datasets: tuple[int, int], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    ours, theirs = datasets
    set_slots(monkeypatch, 1)
    first = launch(team.editor, ours, "a0")  # the one slot is free: sent at once
    assert active_names(team.editor) == ["a0"]
    a1 = launch(team.editor, ours, "a1")
    a2 = launch(team.editor, ours, "a2", priority="high")
    a3 = launch(team.editor, ours, "a3")
    b1 = launch(team.outsider, theirs, "b1", priority="low")
    # Ours wait by priority, then age; the answer says why they wait.
    view = queue(team.editor)
    assert [(r["name"], r["position"], r["priority"]) for r in view["waiting"]] == [
        ("a2", 1, "high"),
        ("a1", 2, "normal"),
        ("a3", 3, "normal"),
    ]
    assert view["waiting_reason"] == f"all 1 {device()} slot(s) of the fleet are busy"
    assert dispatch() == []  # full: nothing more is sent
    # A second slot: the other workspace has nothing running, so its low-priority run goes
    # before our high-priority one.
    set_slots(monkeypatch, 2)
    assert dispatch() == [b1]
    assert dispatch() == []
    # Our a0 ends: both workspaces have one active run, so priority decides: a2.
    assert team.editor.post(f"/api/v1/runs/{first}/cancel").status_code == 200
    assert active_names(team.editor) == ["a2"]
    assert waiting_names(team.editor) == ["a1", "a3"]
    # The sent run really went to the broker as a training task.
    from app.db.models import Run
    from app.db.session import session_scope

    with session_scope() as session:
        sent = session.get(Run, a2)
        assert sent is not None and sent.task_id and sent.dispatched_at is not None
        assert session.get(Run, a1).dispatched_at is None  # type: ignore[union-attr]
    log = [e["message"] for e in team.editor.get(f"/api/v1/runs/{a2}/events").json()]
    assert log[0].endswith("; queued") and log[-1].startswith("left the queue after ")
    # The outsider's queue shows none of ours.
    assert active_names(team.outsider) == ["b1"] and waiting_names(team.outsider) == []
    assert a3 > a1


def test_editors_reorder_waiting_runs_and_the_dispatcher_follows_the_new_order(
    team: Team, datasets: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, _ = datasets
    set_slots(monkeypatch, 1)
    blocker = launch(team.editor, ours, "blocker")
    r1 = launch(team.editor, ours, "r1")
    r2 = launch(team.editor, ours, "r2")
    r3 = launch(team.editor, ours, "r3", priority="high")
    assert waiting_names(team.editor) == ["r3", "r1", "r2"]

    moved = team.editor.post(f"/api/v1/runs/{r2}/move", json={"direction": "up"})
    assert moved.status_code == 200, moved.text
    assert waiting_names(team.editor) == ["r3", "r2", "r1"]
    # Passing a run of higher priority takes its priority.
    moved = team.editor.post(f"/api/v1/runs/{r2}/move", json={"direction": "up"})
    assert moved.json()["priority"] == "high"
    assert waiting_names(team.editor) == ["r2", "r3", "r1"]
    lowered = team.editor.post(f"/api/v1/runs/{r2}/priority", json={"priority": "low"})
    assert lowered.status_code == 200 and lowered.json()["priority"] == "low"
    assert waiting_names(team.editor) == ["r3", "r1", "r2"]

    # Viewers may look but not reorder; a running (sent) run cannot be reordered; bad input
    # is a clear 422.
    refused = team.viewer.post(f"/api/v1/runs/{r1}/move", json={"direction": "up"})
    assert refused.status_code == 403
    sent = team.editor.post(f"/api/v1/runs/{blocker}/priority", json={"priority": "high"})
    assert sent.status_code == 409 and "only waiting runs" in sent.json()["detail"]
    bad = team.editor.post(f"/api/v1/runs/{r1}/move", json={"direction": "sideways"})
    assert bad.status_code == 422
    elsewhere = team.outsider.post(f"/api/v1/runs/{r1}/move", json={"direction": "up"})
    assert elsewhere.status_code == 404

    # Cancelling the waiting head removes it; the freed slot goes to the new head.
    assert team.editor.post(f"/api/v1/runs/{r3}/cancel").json()["status"] == "cancelled"
    assert waiting_names(team.editor) == ["r1", "r2"]
    team.editor.post(f"/api/v1/runs/{blocker}/cancel")
    assert active_names(team.editor) == ["r1"]
    assert audit_actions().count("run.reorder") == 3

    from tests.api.test_bounded_reads import _signed_in_page

    page = _signed_in_page(team, "/queue")  # as the viewer: the queue, no buttons
    assert 'hx-get="/queue" hx-trigger="every 3s [' in page  # paused while a control has focus
    assert f'<tr data-run-id="{r2}">' in page
    assert f'action="/queue/runs/{r2}/move"' not in page
    assert f"1 of 1 {device()} slot in use" in page


def test_quotas_refuse_launches_past_the_monthly_gpu_hours_and_hold_runs_past_concurrency(
    team: Team, datasets: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, _ = datasets
    set_slots(monkeypatch, 4)
    assert put_quotas(team.editor, concurrent_runs=1).status_code == 403  # owners only
    set_quota = put_quotas(team.owner, concurrent_runs=1, gpu_hours_per_month=None)
    assert set_quota.status_code == 200, set_quota.text
    launch(team.editor, ours, "q1")
    launch(team.editor, ours, "q2")
    view = queue(team.editor)
    # Slots are free, but the workspace may run one at a time.
    assert [r["name"] for r in view["active"]] == ["q1"] and view["slots"] == 4
    assert view["waiting_reason"] == "this workspace's quota of 1 concurrent run(s) is in use"
    # Raising the quota lets the waiting run start at once.
    put_quotas(team.owner, concurrent_runs=2, gpu_hours_per_month=None)
    assert active_names(team.editor) == ["q1", "q2"]

    assert put_quotas(team.owner, concurrent_runs=None, gpu_hours_per_month=0).status_code == 200
    refused = team.editor.post("/api/v1/runs", json={"dataset_id": ours, "name": "q3"})
    assert refused.status_code == 429, refused.text
    detail = refused.json()["detail"]
    assert "has used 0.00 of its 0 GPU-hours this month" in detail
    assert "gpu_hours_per_month" in detail
    assert "q3" not in waiting_names(team.editor) + active_names(team.editor)
    quotas = team.viewer.get("/api/v1/quotas").json()
    assert quotas["gpu_hours_per_month"] == 0 and quotas["active_runs"] == 2

    bad = put_quotas(team.owner, concurrent_runs=0)
    assert bad.status_code == 422
    assert audit_actions().count("workspace.quota") == 3
