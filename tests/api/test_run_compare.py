"""Comparing runs: exact config differences, downsampled curves that keep every bucket's
first, last, lowest and highest point, bounded chart data for a 200k-point run, and the
streamed CSV/JSON metrics download."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Team, text_jsonl

BASE_TIME = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def dataset_id(team: Team) -> int:
    return int(team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"])


def _launch(team: Team, dataset_id: int, **config: object) -> int:
    response = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id, "config": config})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _bulk_insert(run_id: int, name: str, values: list[float], *, first_step: int = 1) -> None:
    """Points straight into the table (a real run would take hours to write 200k of them);
    point i is written i seconds after BASE_TIME."""
    from sqlalchemy import insert

    from app.db.models import MetricPoint
    from app.db.session import session_scope

    rows = [
        {
            "run_id": run_id,
            "step": first_step + i,
            "name": name,
            "value": value,
            "created_at": BASE_TIME + timedelta(seconds=i),
        }
        for i, value in enumerate(values)
    ]
    with session_scope() as session:
        for start in range(0, len(rows), 20_000):
            session.execute(insert(MetricPoint), rows[start : start + 20_000])


def _set_config(run_id: int, config: dict) -> None:
    from app.db.models import Run
    from app.db.session import session_scope

    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.config = config


# --- downsampling -------------------------------------------------------------------------
def test_downsampled_series_keep_the_first_last_minimum_and_maximum_points() -> None:
    from app.services.downsample import downsample

    rng = random.Random(7)
    for _ in range(150):
        length = rng.randint(1, 3_000)
        start = rng.randint(0, 50)
        steps = sorted(rng.sample(range(start, start + length * 3), length))
        walk = [0.0]
        for _ in range(length - 1):  # random walks with occasional spikes and plateaus
            jump = rng.choice([rng.gauss(0, 1), rng.gauss(0, 50), 0.0])
            walk.append(round(walk[-1] + jump, rng.choice([1, 6])))
        series = list(zip(steps, walk, strict=True))
        max_points = rng.randint(4, 400)

        kept = downsample(series, max_points=max_points)

        assert len(kept) <= max_points or kept == series  # a short series is kept whole
        assert kept[0] == series[0] and kept[-1] == series[-1]
        assert min(v for _, v in kept) == min(walk)
        assert max(v for _, v in kept) == max(walk)
        assert set(kept) <= set(series)  # real points, never invented ones
        assert [s for s, _ in kept] == sorted({s for s, _ in kept})  # in order, no repeats


def test_the_database_picks_the_same_points_as_the_reference_downsampling(
    team: Team, dataset_id: int, backend: str
) -> None:
    from app.db.models import Run
    from app.db.session import session_scope
    from app.services.downsample import downsample
    from app.services.runs import compare as run_compare

    run_id = _launch(team, dataset_id)
    rng = random.Random(11)
    values = [round(rng.gauss(0, 1), 2) for _ in range(5_000)]  # rounding makes ties
    _bulk_insert(run_id, "train_loss", values)

    with session_scope() as session:
        run = session.get(Run, run_id)
        assert run is not None
        got = run_compare.series(session=session, run=run, metric="train_loss", max_points=200)

    expected = downsample(list(enumerate(values, start=1)), max_points=200)
    assert [(step, value) for step, _, value in got.points] == expected
    assert got.total == 5_000
    assert [at for _, at, _ in got.points] == [float(step - 1) for step, _ in expected]


# --- a long run ---------------------------------------------------------------------------
def test_a_run_with_200k_points_renders_its_chart_from_a_bounded_response(
    team: Team, dataset_id: int
) -> None:
    # On the embedded database only: the query is the one checked on both backends above.
    long_run = _launch(team, dataset_id)
    total = 200_000
    rng = random.Random(3)
    values = [10.0 / (1 + i / 1000) + rng.random() * 0.01 for i in range(total)]
    values[123_457] = 99.0  # a loss spike the chart must show
    values[150_001] = -1.0  # and a dip
    _bulk_insert(long_run, "train_loss", values)

    response = team.viewer.get(
        "/api/v1/compare/series",
        params={"run_ids": [long_run], "metric": "train_loss", "points": 1000},
    )

    assert response.status_code == 200, response.text
    assert len(response.content) < 60_000  # 200k points would be several MB
    (series,) = response.json()["series"]
    assert series["total"] == total
    points = series["points"]
    assert 500 <= len(points) <= 1000
    steps = [p[0] for p in points]
    assert steps[0] == 1 and steps[-1] == total and steps == sorted(steps)
    assert {(123_458, 99.0), (150_002, -1.0)} <= {(p[0], p[2]) for p in points}
    assert points[-1][1] == float(total - 1)  # seconds since the run's first point


def test_a_long_runs_live_chart_history_keeps_spikes_and_the_newest_step(
    team: Team, dataset_id: int, client: TestClient
) -> None:
    from app.services.runs import service as runs

    run_id = _launch(team, dataset_id)
    last = runs.HISTORY_STEPS * 5
    values = [1.0] * last
    values[4_321] = 50.0  # step 4322
    _bulk_insert(run_id, "train_loss", values)

    url = f"ws://127.0.0.1/ws/runs/{run_id}"
    with client.websocket_connect(url, headers=team.viewer.headers) as ws:
        history = ws.receive_json()

    steps = [p["step"] for p in history["points"]]
    assert len(steps) <= runs.HISTORY_STEPS and steps == sorted(steps)
    assert steps[0] == 1 and steps[-1] == last  # a reconnect continues after the newest step
    assert {"step": 4_322, "train_loss": 50.0} in history["points"]


# --- compare: config and final metrics ----------------------------------------------------
def test_config_diff_of_two_runs_is_exact_with_nested_and_missing_keys(
    team: Team, dataset_id: int
) -> None:
    first = _launch(team, dataset_id, learning_rate=0.001, batch_size=4)
    second = _launch(team, dataset_id, learning_rate=0.0003, batch_size=4)
    base = team.viewer.get(f"/api/v1/runs/{first}").json()["config"]
    _set_config(first, {**base, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "tags": ["a"]})
    _set_config(
        second,
        {
            **base,
            "learning_rate": 0.0003,
            "lora": {"r": 8, "alpha": 32},
            "tags": ["a"],
            "flag": True,
        },
    )
    third_config = {**base, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "tags": ["a"]}

    response = team.viewer.get("/api/v1/compare", params={"run_ids": [first, second]})

    assert response.status_code == 200, response.text
    assert response.json()["config_diff"] == [
        {"key": "flag", "values": [None, True], "missing": [first]},
        {"key": "learning_rate", "values": [0.001, 0.0003], "missing": []},
        {"key": "lora.alpha", "values": [16, 32], "missing": []},
        {"key": "lora.dropout", "values": [0.0, None], "missing": [second]},
    ]
    _set_config(second, {**third_config, "learning_rate": 0.001})  # now the same settings
    same = team.viewer.get("/api/v1/compare", params={"run_ids": [first, second]}).json()
    assert same["config_diff"] == []


def test_config_diff_tells_a_missing_key_from_null_and_true_from_one() -> None:
    from app.services.runs.compare import MISSING, config_diff, flatten

    assert flatten({"a": {"b": {"c": 1}, "d": {}}, "e": [1, {"x": 2}]}) == {
        "a.b.c": 1,
        "a.d": {},
        "e": [1, {"x": 2}],
    }
    diffs = config_diff([{"k": None, "n": 1, "same": 2}, {"n": True, "same": 2}])
    assert [(d.key, d.values) for d in diffs] == [("k", [None, MISSING]), ("n", [1, True])]


def test_compare_lists_each_runs_final_metrics_and_every_metric_name(
    team: Team, dataset_id: int
) -> None:
    first, second = _launch(team, dataset_id), _launch(team, dataset_id)
    _bulk_insert(first, "train_loss", [3.0, 2.0, 1.5])
    _bulk_insert(second, "train_loss", [3.0, 2.5])
    _bulk_insert(second, "eval_loss", [2.75], first_step=2)

    body = team.viewer.get("/api/v1/compare", params={"run_ids": [second, first]}).json()

    assert [r["id"] for r in body["runs"]] == [second, first]  # the order asked
    assert [r["final_metrics"] for r in body["runs"]] == [
        {"train_loss": 2.5, "eval_loss": 2.75},
        {"train_loss": 1.5},
    ]
    assert body["metrics"] == ["eval_loss", "train_loss"]
    series = team.viewer.get(
        "/api/v1/compare/series", params={"run_ids": [first, second], "metric": "eval_loss"}
    ).json()["series"]
    assert series == [
        {"run_id": first, "total": 0, "points": []},
        {"run_id": second, "total": 1, "points": [[2, 0.0, 2.75]]},
    ]


def test_compare_with_another_workspaces_run_is_not_found(team: Team, dataset_id: int) -> None:
    theirs = _launch(team, dataset_id)
    own_dataset = team.outsider.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    mine = team.outsider.post("/api/v1/runs", json={"dataset_id": own_dataset}).json()["id"]
    for path in ("/api/v1/compare", "/api/v1/compare/series"):
        for ids in ([theirs], [mine, theirs]):
            response = team.outsider.get(path, params={"run_ids": ids})
            assert response.status_code == 404, (path, ids, response.text)
            assert f"run {theirs} not found" in response.json()["detail"]
    assert team.outsider.get(f"/api/v1/runs/{theirs}/metrics/download").status_code == 404


def test_compare_refuses_too_many_runs_and_bad_parameters(team: Team, dataset_id: int) -> None:
    from app.services.runs.compare import MAX_RUNS

    run_id = _launch(team, dataset_id)
    many = team.viewer.get("/api/v1/compare", params={"run_ids": list(range(1, MAX_RUNS + 2))})
    assert many.status_code == 400 and f"at most {MAX_RUNS} runs" in many.json()["detail"]
    assert team.viewer.get("/api/v1/compare").status_code == 422  # no runs named
    too_many_points = team.viewer.get(
        "/api/v1/compare/series", params={"run_ids": [run_id], "points": 10**6}
    )
    assert too_many_points.status_code == 422
    bad_format = team.viewer.get(f"/api/v1/runs/{run_id}/metrics/download?format=xlsx")
    assert bad_format.status_code == 422


# --- downloads ----------------------------------------------------------------------------
def test_metrics_download_as_csv_and_json_holds_every_point_exactly(
    team: Team, dataset_id: int, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.db.session import session_scope
    from app.services.runs import compare as run_compare
    from app.services.runs import execution as run_execution

    monkeypatch.setattr(run_compare, "EXPORT_PAGE", 7)  # many pages: the keyset paging is used
    run_id = _launch(team, dataset_id)
    points = [(s, "train_loss", 1.0 / s) for s in range(1, 21)]
    points += [(s, "eval_loss", 0.1 + s / 3) for s in range(5, 21, 5)]
    with session_scope() as session:
        run_execution.write_metrics(session=session, run_id=run_id, points=points)
    expected = sorted((step, name, value) for step, name, value in points)

    as_csv = team.viewer.get(f"/api/v1/runs/{run_id}/metrics/download?format=csv")
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert f'filename="run-{run_id}-metrics.csv"' in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(int(r["step"]), r["metric"], float(r["value"])) for r in rows] == expected
    assert all(r["time"].endswith("Z") for r in rows)

    as_json = team.viewer.get(f"/api/v1/runs/{run_id}/metrics/download", params={"format": "json"})
    assert as_json.status_code == 200
    body = json.loads(as_json.text)
    assert body["run"]["id"] == run_id
    assert [(p["step"], p["metric"], p["value"]) for p in body["points"]] == expected


def test_metrics_download_of_a_run_without_points_is_an_empty_table(
    team: Team, dataset_id: int
) -> None:
    run_id = _launch(team, dataset_id)
    assert team.viewer.get(f"/api/v1/runs/{run_id}/metrics/download").text == (
        "step,metric,value,time\n"
    )
    body = team.viewer.get(f"/api/v1/runs/{run_id}/metrics/download?format=json").json()
    assert body["points"] == []


# --- pages --------------------------------------------------------------------------------
def test_the_runs_list_offers_compare_and_the_compare_page_shows_both_runs_and_their_diff(
    team: Team, dataset_id: int
) -> None:
    from tests.api.test_bounded_reads import _signed_in_page

    first = _launch(team, dataset_id, learning_rate=0.001)
    second = _launch(team, dataset_id, learning_rate=0.0003, seed=7)
    _bulk_insert(first, "train_loss", [2.0, 1.0])

    runs_page = _signed_in_page(team, "/runs")
    assert '<form id="compare-form" method="get" action="/compare"' in runs_page
    for run_id in (first, second):
        assert f'name="run" value="{run_id}" form="compare-form"' in runs_page

    page = _signed_in_page(team, f"/compare?run={first}&run={second}")
    assert re.findall(r'<tr data-key="([^"]+)">', page) == ["learning_rate", "seed"]
    assert f"/api/v1/compare/series?run_ids={first}&amp;run_ids={second}" in page
    assert f'href="/runs/{first}"' in page and f'href="/runs/{second}"' in page
    assert '<option value="train_loss" selected>' in page
    run_page = _signed_in_page(team, f"/runs/{first}")
    assert f'href="/api/v1/runs/{first}/metrics/download?format=csv"' in run_page
