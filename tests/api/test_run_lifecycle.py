"""A run's lifecycle beyond launch and cancel: stop-and-keep, resume, the lease, the restart
cap, failures with their traceback, and a worker shutdown (SIGTERM) that loses no work."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.conftest import (
    Team,
    record_unloadable_checkpoint,
    resume_then_stop_and_keep,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def claim(run_id: int) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="test") is not None


def go_silent(run_id: int) -> None:
    """The worker holding the run stops heartbeating (as after kill -9)."""
    from app.core.settings import get_settings
    from app.db.base import utcnow
    from app.db.models import Run
    from app.db.session import session_scope

    stale = utcnow() - timedelta(seconds=get_settings().run_stale_after_s + 5)
    with session_scope() as session:
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=stale))
        session.commit()


def sweep() -> list[int]:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        return run_execution.interrupt_orphaned_runs(session=session)


def test_stop_and_keep_needs_a_running_run_and_an_editor(team: Team, run_id: int) -> None:
    queued = team.editor.post(f"/api/v1/runs/{run_id}/stop")
    assert queued.status_code == 409 and "only a running run" in queued.json()["detail"]
    claim(run_id)
    assert team.viewer.post(f"/api/v1/runs/{run_id}/stop").status_code == 403
    assert team.outsider.post(f"/api/v1/runs/{run_id}/stop").status_code == 404
    stopped = team.editor.post(f"/api/v1/runs/{run_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["stop_requested"] and stopped.json()["status"] == "running"

    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:  # what the worker's reporter reads
        assert run_execution.stop_flags(session=session, run_id=run_id) == (False, True)


def test_a_redelivered_task_whose_run_is_alive_elsewhere_exits_without_training(
    team: Team, run_id: int
) -> None:
    from workers.tasks import train_run

    claim(run_id)  # a worker holds the run and its heartbeat is fresh
    assert train_run.apply(args=[run_id], task_id="redelivered").result == "skipped"
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "running" and run["attempts"] == 1


def test_a_dead_workers_run_restarts_up_to_the_cap_then_fails_and_resume_tries_again(
    team: Team, run_id: int
) -> None:
    from app.core.settings import get_settings

    cap = get_settings().run_max_restarts
    assert cap == 3
    for attempt in range(1, cap + 1):
        claim(run_id)
        go_silent(run_id)
        assert sweep() == [run_id], f"restart {attempt} should be re-queued"
        assert team.viewer.get(f"/api/v1/runs/{run_id}").json()["status"] == "interrupted"
    claim(run_id)  # attempt cap + 1 dies as well
    go_silent(run_id)
    assert sweep() == []
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "failed"
    assert "died 4 times" in run["error"] and "smaller batch size" in run["error"]

    assert team.viewer.post(f"/api/v1/runs/{run_id}/resume").status_code == 403
    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued" and resumed.json()["error"] is None
    assert resumed.json()["attempts"] == 0
    again = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert again.status_code == 409 and "can be resumed" in again.text


def test_out_of_memory_errors_suggest_a_smaller_batch_and_keep_the_traceback_tail() -> None:
    import traceback

    import torch

    from app.services.runs.execution import describe_failure

    def allocate() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    try:
        allocate()
    except torch.OutOfMemoryError as exc:
        error, detail = describe_failure(exc, traceback.format_exc())
    assert error.startswith("OutOfMemoryError: CUDA out of memory")
    assert "smaller batch size" in error and "gradient accumulation" in error
    assert "in allocate" in detail and detail.splitlines()[-1].startswith("torch.OutOfMemoryError")

    error, _ = describe_failure(ValueError("bad things"), "")
    assert error == "ValueError: bad things"

    # A rank of a multi-device run reports its error as a line: recognised the same way.
    from app.services.runs.execution import describe_error

    error, _ = describe_error("OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB", "")
    assert "smaller batch size" in error
    assert describe_error("ValueError: bad things", "")[0] == "ValueError: bad things"


def test_a_failed_run_shows_its_error_and_traceback_on_its_page(
    team: Team, run_id: int, installation: Path
) -> None:
    """A real failure inside the engine: the checkpoint to resume from is not loadable."""
    from workers.tasks import train_run

    record_unloadable_checkpoint(installation, run_id, step=5)
    assert train_run.apply(args=[run_id], task_id="fails").result == "failed"

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "failed"
    assert run["error"].startswith("ValueError: cannot resume")
    assert "Traceback" not in run["error"] and "_checkpoint_to_resume" in run["error_detail"]
    from tests.browser.test_page_routes import HTML, _sign_in

    _sign_in(team.viewer.client, team.viewer)
    page = team.viewer.client.get(f"/runs/{run_id}", headers=HTML)
    assert page.status_code == 200
    assert "cannot resume" in page.text
    assert 'data-testid="run-traceback"' in page.text and "_checkpoint_to_resume" in page.text


def test_sigterm_hands_the_run_back_with_a_checkpoint_and_stop_and_keep_ends_it_succeeded(
    team: Team, run_id: int, tmp_path: Path
) -> None:
    """A worker's warm shutdown forwards SIGTERM to the process running the task (see
    workers/celery_app.py); here that process is started directly."""
    log = (tmp_path / "task.log").open("w+")
    task = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.task_in_process", str(run_id)],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while team.viewer.get(f"/api/v1/runs/{run_id}").json()["step"] < 3:
        assert task.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
        time.sleep(0.2)
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=60) == 0, Path(log.name).read_text()
    assert "task result: interrupted" in Path(log.name).read_text()

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "interrupted" and run["attempts"] == 0, run
    stopped_at = run["step"]
    assert 3 <= stopped_at < 40
    checkpoints = [c["step"] for c in team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()]
    assert stopped_at in checkpoints, "the shutdown saved a checkpoint at the step it stopped"
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert any("shutting down" in m for m in events)

    # The next worker resumes it; the user then ends it early with "stop and keep".
    resume_then_stop_and_keep(team, run_id, past_step=stopped_at + 3, timeout_s=120)

    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and stopped_at + 3 <= run["step"] < 40
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert f"resuming from step {stopped_at} (attempt 1)" in events
    assert any(m.startswith("registered as") for m in events), "stop-and-keep keeps the model"
    final = [c for c in team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()]
    assert final[-1]["is_final"] and final[-1]["step"] == run["step"]
    steps = [
        p["step"]
        for p in team.viewer.get(f"/api/v1/runs/{run_id}/metrics").json()
        if "train_loss" in p["values"]
    ]
    assert steps == list(range(1, run["step"] + 1)), "every step exactly once"


def test_retention_keeps_the_last_n_and_the_best_and_marks_the_rest_deleted(
    team: Team, run_id: int, installation: Path
) -> None:
    from app.core.errors import InvalidTransition
    from app.db.models import Checkpoint, Run
    from app.db.session import session_scope
    from app.services.registry import registration
    from workers.metrics_sink import RunReporter

    claim(run_id)
    reporter = RunReporter(
        run_id, retention={"keep_last_checkpoints": 2, "keep_best_metric": "eval_loss"}
    )
    folders = {}
    try:
        for step, eval_loss in ((2, 3.0), (4, 1.0), (6, 2.0), (8, 2.5)):
            folder = installation / "artifacts" / "runs" / str(run_id) / "checkpoints"
            folders[step] = folder / f"checkpoint-{step}"
            folders[step].mkdir(parents=True)
            (folders[step] / "model.safetensors").write_bytes(b"weights")
            reporter.on_checkpoint(step, folders[step], {"eval_loss": eval_loss})
    finally:
        reporter.close()

    assert [s for s, f in folders.items() if f.exists()] == [4, 6, 8]
    listed = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert [(c["step"], c["deleted_at"] is not None) for c in listed] == [
        (2, True), (4, False), (6, False), (8, False),
    ]  # fmt: skip
    with session_scope() as session:
        deleted = session.query(Checkpoint).filter_by(run_id=run_id, step=2).one()
        with pytest.raises(InvalidTransition, match="removed by the retention policy"):
            registration.register_checkpoint(
                session=session, run=session.get(Run, run_id), checkpoint=deleted
            )


def test_a_metric_point_is_stamped_when_its_step_reported_it_not_when_its_batch_was_written(
    team: Team, run_id: int
) -> None:
    """The worker writes in batches (FLUSH_INTERVAL_S later at least); the time must not drift."""
    from sqlalchemy import select

    from app.db.base import utcnow
    from app.db.models import MetricPoint
    from app.db.session import session_scope
    from workers.metrics_sink import RunReporter

    claim(run_id)
    reporter = RunReporter(run_id)
    windows = {}
    try:
        for step in (1, 2):
            before = utcnow()
            reporter.on_metrics(step, {"train_loss": 1.0 / step})
            windows[step] = (before, utcnow())
    finally:
        reporter.close()  # flushes what is left
    with session_scope() as session:
        stamped = dict(
            session.execute(
                select(MetricPoint.step, MetricPoint.created_at).where(MetricPoint.run_id == run_id)
            ).all()
        )
    for step, (before, after) in windows.items():
        assert before <= stamped[step] <= after, (step, before, stamped[step], after)


def _page(team: Team, path: str) -> str:
    """`path` as the editor's browser sees it (the viewer's is tests.api.test_bounded_reads')."""
    from tests.browser.test_page_routes import HTML, _sign_in

    client = team.editor.client
    _sign_in(client, team.editor)
    page = client.get(path, headers=HTML)
    client.cookies.clear()
    assert page.status_code == 200, page.text[:300]
    return page.text


def test_a_stopped_run_looks_stopped_and_resumes_from_where_it_stopped_to_the_end(
    team: Team, run_id: int
) -> None:
    from workers.tasks import train_run

    resume_then_stop_and_keep(team, run_id, past_step=3, timeout_s=120)
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    stopped_at = run["step"]
    assert run["status"] == "succeeded" and 3 <= stopped_at < 40
    page = _page(team, f"/runs/{run_id}")
    assert 'data-status="stopped">stopped</span>' in page  # not a green "succeeded"
    percent = round(100 * stopped_at / 40)
    assert f'id="run-percent">{percent}%' in page and f'aria-valuenow="{percent}"' in page
    assert 'data-testid="resume-run"' in page
    assert 'data-status="stopped">stopped</span>' in _page(team, "/runs")
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert len([m for m in events if m.startswith("checkpoint saved at step")]) == len(
        {m for m in events if m.startswith("checkpoint saved at step")}
    ), "each checkpoint is logged once"

    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued" and not resumed.json()["stop_requested"]
    assert train_run.apply(args=[run_id], task_id="again").result == "succeeded"
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["step"] == 40
    events = [e["message"] for e in team.viewer.get(f"/api/v1/runs/{run_id}/events").json()]
    assert f"resuming from step {stopped_at} (attempt 1)" in events
    page = _page(team, f"/runs/{run_id}")
    assert 'data-status="succeeded">succeeded</span>' in page and 'id="run-percent">100%' in page
    assert 'data-testid="resume-run"' not in page


def test_a_cancelled_run_can_be_resumed(team: Team, run_id: int) -> None:
    assert team.editor.post(f"/api/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
    assert 'data-testid="resume-run"' in _page(team, f"/runs/{run_id}")
    resumed = team.editor.post(f"/api/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued"
    claim(run_id)  # the cancel flag is cleared: a worker may take it again


def test_a_silent_workers_run_says_worker_lost_at_once_not_running_with_an_eta(
    team: Team, run_id: int
) -> None:
    from app.db.base import utcnow
    from app.db.models import Run
    from app.db.session import session_scope

    claim(run_id)
    with session_scope() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(step=5, total_steps=40, heartbeat_at=utcnow() - timedelta(seconds=20))
        )
        session.commit()
    assert sweep() == []  # not stale enough for the sweeper to re-queue it yet
    page = _page(team, f"/runs/{run_id}")
    assert 'data-status="worker-lost">worker lost, resuming</span>' in page
    assert 'id="run-eta">—' in page
