"""Reads that stay cheap in a big workspace: paged metrics, a thinned chart history, the registry
page, token bookkeeping — each without losing what a client needs (see bench/api_load.py)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Team, text_jsonl


@pytest.fixture
def run_id(team: Team) -> int:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    return int(team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"])


def _write_steps(run_id: int, steps: range, *, eval_every: int = 0) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    points = [(s, "train_loss", 10.0 / s) for s in steps]
    points += [(s, "eval_loss", 20.0 / s) for s in steps if eval_every and s % eval_every == 0]
    with session_scope() as session:
        run_execution.write_metrics(session=session, run_id=run_id, points=points)


def test_metrics_come_in_pages_of_whole_steps_that_miss_nothing(
    team: Team, run_id: int, backend: str
) -> None:
    _write_steps(run_id, range(1, 26), eval_every=5)
    got: list[dict] = []
    after = -1
    while True:
        page = team.viewer.get(
            f"/api/v1/runs/{run_id}/metrics", params={"after_step": after, "limit": 10}
        ).json()
        got += page
        if len(page) < 10:
            break
        after = page[-1]["step"]
    assert [p["step"] for p in got] == list(range(1, 26))
    assert got[9]["values"] == {"train_loss": 1.0, "eval_loss": 2.0}  # step 10: both, whole


def test_a_new_chart_of_a_long_run_gets_a_thinned_history_and_a_reconnect_every_missing_point(
    team: Team, run_id: int, backend: str, client: TestClient
) -> None:
    from app.services.runs import service as runs

    last = runs.HISTORY_STEPS * 2 + 10
    _write_steps(run_id, range(1, last + 1), eval_every=100)
    url = f"ws://127.0.0.1/ws/runs/{run_id}"
    with client.websocket_connect(url, headers=team.viewer.headers) as ws:
        history = ws.receive_json()
    assert history["type"] == "metrics"
    steps = [p["step"] for p in history["points"]]
    assert len(steps) <= runs.HISTORY_STEPS < last and steps == sorted(steps)
    assert steps[-1] == last  # the newest step is always there: a reconnect continues from it
    eval_points = [p for p in history["points"] if "eval_loss" in p]
    assert eval_points and eval_points[-1]["step"] == last - last % 100  # sparse metrics kept

    with client.websocket_connect(
        f"{url}?after_step={last - 50}", headers=team.viewer.headers
    ) as ws:
        missing = ws.receive_json()
    assert [p["step"] for p in missing["points"]] == list(range(last - 49, last + 1))


def test_an_ended_long_runs_thinned_history_is_stored_once_and_replaced_when_stale(
    team: Team, run_id: int, backend: str, client: TestClient
) -> None:
    """Thinning reads every point: the run's end stores it for every web process to reuse."""
    from sqlalchemy import func, select

    from app.db.models import MetricPoint, RunChartHistory, RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution
    from app.services.runs import service as runs

    def charted_steps() -> list[int]:
        with client.websocket_connect(
            f"ws://127.0.0.1/ws/runs/{run_id}", headers=team.viewer.headers
        ) as ws:
            return [int(p["step"]) for p in ws.receive_json()["points"]]

    def stored() -> tuple[int, int] | None:
        with session_scope() as session:
            history = session.get(RunChartHistory, run_id)
            newest = session.scalar(
                select(func.max(MetricPoint.id)).where(MetricPoint.run_id == run_id)
            )
            return None if history is None else (history.newest_point_id, newest)

    last = runs.HISTORY_STEPS * 2 + 10
    _write_steps(run_id, range(1, last + 1))
    live = charted_steps()  # a running run's history is thinned afresh, not stored
    assert stored() is None and live[-1] == last
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="t")
        run_execution.finish(session=session, run_id=run_id, status=RunStatus.failed, error="x")
    covered, newest = stored() or (0, -1)
    assert covered == newest, "the run's end stores its thinned history"
    assert charted_steps() == live  # served from it: the same points
    _write_steps(run_id, range(last + 1, last + 6))  # as a resumed run would add them
    assert charted_steps()[-1] == last + 5
    covered, newest = stored() or (0, -1)
    assert covered == newest, "a stale history is replaced"


def test_the_run_pages_figures_are_each_metrics_newest_value(
    team: Team, run_id: int, backend: str
) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution
    from app.services.runs import service as runs

    with session_scope() as session:
        assert runs.latest_metrics(session=session, run_id=run_id) == {}
    _write_steps(run_id, range(1, 301), eval_every=100)
    with session_scope() as session:
        # Names sort "eval_loss" < "learning_rate" < "train_loss": the walk visits all three.
        newer = [(301, "learning_rate", 0.5), (302, "train_loss", 0.25)]
        run_execution.write_metrics(session=session, run_id=run_id, points=newer)
    with session_scope() as session:
        assert runs.latest_metrics(session=session, run_id=run_id) == {
            "train_loss": 0.25,
            "eval_loss": 20.0 / 300,
            "learning_rate": 0.5,
        }


def test_the_registry_page_shows_the_newest_versions_and_links_to_all(
    team: Team, run_id: int
) -> None:
    from app.db.models import Checkpoint, Run
    from app.db.session import session_scope
    from app.services.registry import registration
    from app.web.models_pages import VERSIONS_SHOWN

    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        for step in range(1, VERSIONS_SHOWN + 3):
            checkpoint = Checkpoint(run_id=run_id, step=step, storage_key=f"runs/{run_id}/c{step}")
            session.add(checkpoint)
            session.flush()
            model_id = registration.register_checkpoint(
                session=session, run=run, checkpoint=checkpoint
            ).registered_model_id
    total = VERSIONS_SHOWN + 2
    api_models = team.viewer.get("/api/v1/models").json()
    assert [len(m["versions"]) for m in api_models] == [total]

    page = _signed_in_page(team, "/models")
    assert page.count('class="version"') == VERSIONS_SHOWN
    assert f'href="/models?model={model_id}">Show all {total} versions' in page
    assert _signed_in_page(team, f"/models?model={model_id}").count('class="version"') == total


def _signed_in_page(team: Team, path: str) -> str:
    """`path` as the viewer's browser sees it, signed in and acting in the team's workspace."""
    client, html = team.viewer.client, {"Accept": "text/html"}
    client.cookies.clear()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login", headers=html).text)
    assert csrf
    data = {"email": team.viewer.email, "password": PASSWORD, "csrf_token": csrf.group(1)}
    assert client.post("/login", data=data, follow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/", headers=html).text)
    assert csrf
    switched = client.post(
        "/workspace",
        data={"workspace_id": str(team.viewer.workspace_id), "csrf_token": csrf.group(1)},
        follow_redirects=False,
    )
    assert switched.status_code == 303
    page = client.get(path, headers=html)
    client.cookies.clear()
    assert page.status_code == 200, page.text[:300]
    return page.text


def test_a_tokens_last_use_is_written_at_most_once_a_minute(team: Team) -> None:
    from sqlalchemy import select

    from app.core.security import hash_token
    from app.db.base import utcnow
    from app.db.models import ApiToken
    from app.db.session import session_scope

    mine = ApiToken.token_hash == hash_token(team.viewer.token)

    def last_used() -> object:
        with session_scope() as session:
            return session.scalar(select(ApiToken.last_used_at).where(mine))

    team.viewer.get("/api/v1/me")
    first = last_used()
    assert first is not None
    team.viewer.get("/api/v1/me")
    assert last_used() == first  # a read is not a write

    with session_scope() as session:
        token = session.scalar(select(ApiToken).where(mine))
        assert token is not None
        token.last_used_at = utcnow() - timedelta(minutes=2)
    team.viewer.get("/api/v1/me")
    assert last_used() > first  # type: ignore[operator]
