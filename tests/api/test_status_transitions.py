"""The one table of status moves (app/domain/lifecycle.py): what it allows, what it refuses,
and that the services that move runs, sweeps and uploads go through it."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl


def test_every_status_enum_keeps_the_strings_already_stored() -> None:
    from app.domain import lifecycle

    assert [s.value for s in lifecycle.RunStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "interrupted",
    ]
    assert [s.value for s in lifecycle.SweepStatus] == [
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert [s.value for s in lifecycle.DatasetVersionStatus] == ["ready", "preparing", "failed"]
    assert [s.value for s in lifecycle.UploadStatus] == ["open", "completed"]
    assert [s.value for s in lifecycle.DeploymentStatus] == [
        "loading",
        "ready",
        "failed",
        "stopped",
    ]


def test_every_table_names_every_status_of_its_kind_and_only_those() -> None:
    from app.domain import lifecycle

    for kind, table in lifecycle.TABLES.items():
        assert set(table) == set(kind), kind
        for targets in table.values():
            assert all(isinstance(t, kind) for t in targets), kind


def test_a_move_outside_the_table_raises_invalid_transition_naming_the_record() -> None:
    from app.core.errors import InvalidTransition
    from app.domain import lifecycle
    from app.domain.lifecycle import RunStatus

    class Row:
        id = 7
        status = "succeeded"

    row = Row()
    with pytest.raises(InvalidTransition, match="run 7 is succeeded; it cannot become running"):
        lifecycle.transition(row, RunStatus.running)
    assert row.status == "succeeded", "a refused move changes nothing"
    assert lifecycle.transition(row, RunStatus.queued) == RunStatus.succeeded
    assert row.status == RunStatus.queued


def test_a_stopped_deployment_never_moves_again_and_a_live_one_follows_its_server() -> None:
    from app.domain import lifecycle
    from app.domain.lifecycle import DeploymentStatus

    live = ("loading", "ready", "failed")
    for target in DeploymentStatus:
        assert not lifecycle.allowed("stopped", target), target
        for status in live:  # the server's report, the same one included; or a stop
            assert lifecycle.allowed(status, target), (status, target)


def test_stopped_and_cancelled_runs_may_be_queued_again_but_never_jump_to_running() -> None:
    from app.domain import lifecycle
    from app.domain.lifecycle import RunStatus

    for status in ("succeeded", "cancelled", "failed", "interrupted"):
        assert lifecycle.allowed(status, RunStatus.queued), status
    for status in ("succeeded", "cancelled", "failed"):
        assert not lifecycle.allowed(status, RunStatus.running), status
    assert sorted(lifecycle.sources(RunStatus.running)) == ["interrupted", "queued", "running"]
    assert not lifecycle.allowed("no-such-status", RunStatus.queued)


def test_a_worker_cannot_finish_a_run_it_never_claimed(team: Team) -> None:
    from app.core.errors import InvalidTransition
    from app.db.models import Run, RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    with session_scope() as session, pytest.raises(InvalidTransition, match="queued"):
        run_execution.finish(session=session, run_id=run_id, status=RunStatus.succeeded)
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == RunStatus.queued and run.finished_at is None


def test_cancelling_a_finished_run_answers_409_and_resume_of_a_queued_one_too(
    team: Team,
) -> None:
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 409, resumed.text
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="t")
        run_execution.finish(session=session, run_id=run_id, status=RunStatus.failed, error="x")
    cancelled = team.editor.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 409, cancelled.text
    assert "already failed" in cancelled.json()["detail"]


def test_a_finished_upload_cannot_be_completed_twice() -> None:
    from app.core.errors import InvalidTransition
    from app.domain import lifecycle
    from app.domain.lifecycle import UploadStatus

    class Upload:
        id = 3
        status = "completed"

    with pytest.raises(InvalidTransition, match="upload 3 is completed"):
        lifecycle.transition(Upload(), UploadStatus.completed)
