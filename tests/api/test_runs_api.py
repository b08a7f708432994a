"""Launching, listing and cancelling runs through the native API."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl


@pytest.fixture
def dataset_id(team: Team) -> int:
    return int(team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"])


def test_launch_rejects_an_unknown_base_model(team: Team, dataset_id: int) -> None:
    response = team.editor.post(
        "/api/v1/runs", json={"dataset_id": dataset_id, "base_model": "gpt-17"}
    )
    assert response.status_code == 400
    assert "unknown base model 'gpt-17'" in response.json()["detail"]
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"learning_rate": -1}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_split": 0.9}, "eval_split"),
        ({"warmup": 3}, "warmup"),
    ],
)
def test_launch_rejects_out_of_range_hyperparameters(
    team: Team, dataset_id: int, config: dict, field: str
) -> None:
    response = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


def test_launch_with_another_workspaces_dataset_is_not_found(team: Team, dataset_id: int) -> None:
    response = team.outsider.post("/api/v1/runs", json={"dataset_id": dataset_id})
    assert response.status_code == 404 and "dataset" in response.json()["detail"]


def test_viewer_cannot_launch_or_cancel(team: Team, dataset_id: int) -> None:
    assert team.viewer.post("/api/v1/runs", json={"dataset_id": dataset_id}).status_code == 403
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    assert team.viewer.post(f"/api/v1/runs/{run_id}/cancel").status_code == 403


def test_cancelling_a_queued_run_ends_it_at_once_and_twice_is_a_conflict(
    team: Team, dataset_id: int, backend: str
) -> None:
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    cancelled = team.editor.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = team.editor.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert any("cancellation requested by editor@example.com" in m for m in events)


def test_run_of_another_workspace_is_not_found(team: Team, dataset_id: int) -> None:
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    for path in ("", "/metrics", "/events", "/checkpoints"):
        assert team.outsider.get(f"/api/v1/runs/{run_id}{path}").status_code == 404
    assert team.outsider.post(f"/api/v1/runs/{run_id}/cancel").status_code == 404


def test_launch_fails_cleanly_when_the_queue_is_unreachable(
    team: Team, dataset_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core import task_queue
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "redis_url", "redis://127.0.0.1:1/0")
    task_queue.celery_client.cache_clear()
    response = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id})
    task_queue.celery_client.cache_clear()
    assert response.status_code == 503
    assert "job queue is not reachable" in response.json()["detail"]
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


def test_metrics_after_a_step_return_exactly_the_missing_points(
    team: Team, dataset_id: int, backend: str
) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    with session_scope() as session:
        run_execution.write_metrics(
            session=session,
            run_id=run_id,
            points=[(s, "train_loss", 5.0 - s / 10) for s in range(1, 11)]
            + [(10, "eval_loss", 4.2)],
        )
        # a resumed worker reporting a step again must not duplicate it
        run_execution.write_metrics(
            session=session, run_id=run_id, points=[(10, "train_loss", 9.9)]
        )
    points = team.viewer.get(f"/api/v1/runs/{run_id}/metrics", params={"after_step": 7}).json()
    assert [p["step"] for p in points] == [8, 9, 10]
    assert points[-1]["values"] == {"train_loss": 4.0, "eval_loss": 4.2}
