"""Shared setup of the browser tests that try registered models answered by the real inference
process (the playgrounds, the arena): an app with its own inference process, and finished runs
whose final models are built here and registered. One place, so the modules that need it stay
about what they test rather than how the models got there."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    ADMIN_EMAIL,
    PASSWORD,
    Server,
    _free_port,
    running_app,
)
from tests.serving.conftest import inference_process

# The fixtures every module using this one needs, under the names its tests ask for.
browser = flows.browser
no_console_errors = flows.no_console_errors


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    """The app and an inference process on a free port of its own, sharing one data dir."""
    inference_port = _free_port()
    with (
        running_app(
            tmp_path_factory, sqlite_template, LLMIDE_INFERENCE_PORT=str(inference_port)
        ) as srv,
        inference_process(srv.data_dir, inference_port),
    ):
        yield srv


def register_finished_runs(
    server: Server, builds: Sequence[tuple[str, Callable[[Path], None]]]
) -> list[str]:
    """For each (run name, build) launch a run as the first admin, build its final model with
    `build(folder)` and finish it as succeeded, which registers it; the serving names of all
    the registered versions. Finishing goes through the same code a worker does, so the
    registry sees exactly what a trained run leaves behind, without training."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services import artifacts
    from app.services.runs import execution as run_execution

    run_ids = []
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        csrf, dataset_id = flows.first_admin_with_dataset(api)
        for name, _build in builds:
            launched = api.post(
                "/api/v1/runs",
                json={"dataset_id": dataset_id, "name": name, "config": {}},
                headers=csrf,
            )
            assert launched.status_code == 201, launched.text
            run_ids.append(int(launched.json()["id"]))
    for run_id, (_name, build) in zip(run_ids, builds, strict=True):
        folder = artifacts.resolve(f"{artifacts.run_dir_key(run_id)}/final")
        build(folder)
        with session_scope() as session:
            assert run_execution.claim(session=session, run_id=run_id, task_id="browser-test")
            run_execution.finish(
                session=session,
                run_id=run_id,
                status=RunStatus.succeeded,
                final_checkpoint_key=artifacts.key_for(folder),
                final_step=1,
                final_metrics={},
            )
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        login = api.post("/api/v1/session", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        versions = [v for m in api.get("/api/v1/models").json() for v in m["versions"]]
    assert len(versions) == len(builds)
    return [str(v["serving_name"]) for v in versions]
