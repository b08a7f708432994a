"""The registry (versions with lineage) and deployments, without an inference server running."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Team, text_jsonl


def finished_run_with_version(team: Team, installation: Path) -> tuple[int, dict]:
    """A run that the worker finished, as run_execution.finish records it (no real training)."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post(
        "/api/v1/runs", json={"dataset_id": dataset_id, "suffix": "greeter"}
    ).json()["id"]
    final = installation / "artifacts" / "runs" / str(run_id) / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"not really weights")
    with session_scope() as session:
        run_execution.claim(session=session, run_id=run_id, task_id="t")
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=f"runs/{run_id}/final",
            final_step=12,
            final_metrics={"eval_loss": 1.5},
        )
    models = team.viewer.get("/api/v1/models").json()
    return run_id, models[0]["versions"][0]


def test_a_succeeded_run_is_registered_with_its_lineage(
    team: Team, installation: Path, backend: str
) -> None:
    run_id, version = finished_run_with_version(team, installation)
    assert version["version"] == 1 and version["run_id"] == run_id
    assert (
        version["serving_name"].startswith("ft:scratch-tiny:")
        and "greeter" in version["serving_name"]
    )
    assert version["lineage"]["metrics"] == {"eval_loss": 1.5}
    assert version["lineage"]["config"]["learning_rate"] > 0
    assert team.viewer.get(f"/api/v1/model-versions/{version['id']}").status_code == 200
    assert team.outsider.get(f"/api/v1/model-versions/{version['id']}").status_code == 404
    checkpoints = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert checkpoints[-1]["is_final"] and checkpoints[-1]["step"] == 12


def test_deploying_while_the_inference_server_is_down_fails_clearly_and_records_why(
    team: Team, installation: Path
) -> None:
    _, version = finished_run_with_version(team, installation)
    response = team.editor.post("/api/v1/deployments", json={"model_version_id": version["id"]})
    assert response.status_code == 503
    assert "not reachable" in response.json()["detail"]
    deployments = team.viewer.get("/api/v1/deployments").json()
    assert [d["status"] for d in deployments] == ["failed"]
    assert "not reachable" in deployments[0]["error"]


def test_deploying_a_failed_deployment_again_loads_the_same_row_again(
    team: Team, installation: Path
) -> None:
    """failed → loading → failed through the lifecycle table: one row, the latest reason."""
    _, version = finished_run_with_version(team, installation)
    body = {"model_version_id": version["id"]}
    assert team.editor.post("/api/v1/deployments", json=body).status_code == 503
    again = team.editor.post("/api/v1/deployments", json=body)
    assert again.status_code == 503 and "not reachable" in again.json()["detail"]
    deployments = team.viewer.get("/api/v1/deployments").json()
    assert [d["status"] for d in deployments] == ["failed"]


def test_viewers_cannot_deploy_and_outsiders_cannot_see_deployments(
    team: Team, installation: Path
) -> None:
    _, version = finished_run_with_version(team, installation)
    body = {"model_version_id": version["id"]}
    assert team.viewer.post("/api/v1/deployments", json=body).status_code == 403
    assert team.outsider.post("/api/v1/deployments", json=body).status_code == 404
    team.editor.post("/api/v1/deployments", json=body)
    deployment_id = team.editor.get("/api/v1/deployments").json()[0]["id"]
    assert team.outsider.get(f"/api/v1/deployments/{deployment_id}").status_code == 404
    assert team.outsider.delete(f"/api/v1/deployments/{deployment_id}").status_code == 404


def test_stopping_a_deployment_twice_is_a_conflict(team: Team, installation: Path) -> None:
    _, version = finished_run_with_version(team, installation)
    team.editor.post("/api/v1/deployments", json={"model_version_id": version["id"]})
    deployment_id = team.editor.get("/api/v1/deployments").json()[0]["id"]
    stopped = team.editor.delete(f"/api/v1/deployments/{deployment_id}")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert team.editor.delete(f"/api/v1/deployments/{deployment_id}").status_code == 409


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_metric_values_are_left_out_instead_of_breaking_the_run(
    team: Team, value: float
) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    with session_scope() as session:
        run_execution.write_metrics(
            session=session, run_id=run_id, points=[(1, "train_loss", 2.0), (1, "grad_norm", value)]
        )
    points = team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
    assert points == [{"step": 1, "values": {"train_loss": 2.0}}]


def test_checkpoint_metrics_with_nan_are_stored_without_it(team: Team, backend: str) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    with session_scope() as session:
        run_execution.record_checkpoint(
            session=session,
            run_id=run_id,
            step=5,
            storage_key=f"runs/{run_id}/checkpoints/c5",
            metrics={"train_loss": 1.0, "grad_norm": float("nan"), "eval_perplexity": float("inf")},
        )
    checkpoints = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert checkpoints[0]["metrics"] == {"train_loss": 1.0}
