"""A run as one config document: download (JSON, YAML), edit in the browser, clone."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import Team, text_jsonl


@pytest.fixture
def run(team: Team) -> dict:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    launched = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": dataset_id,
            "name": "baseline",
            "config": {"learning_rate": 0.001, "max_steps": 7, "early_stopping_patience": 2},
        },
    )
    assert launched.status_code == 201, launched.text
    return dict(launched.json())


def test_the_downloaded_config_posts_back_as_the_same_launch(team: Team, run: dict) -> None:
    as_json = team.viewer.get(f"/api/v1/runs/{run['id']}/config?format=json")
    assert as_json.status_code == 200
    assert "attachment" in as_json.headers["content-disposition"]
    spec = json.loads(as_json.text)
    assert spec["config"]["learning_rate"] == 0.001 and spec["config"]["max_steps"] == 7
    as_yaml = team.viewer.get(f"/api/v1/runs/{run['id']}/config")
    assert yaml.safe_load(as_yaml.text) == spec

    again = team.editor.post("/api/v1/runs", json=spec)
    assert again.status_code == 201, again.text
    assert again.json()["config"] == run["config"]
    assert team.viewer.get(f"/api/v1/runs/{run['id']}/config?format=xml").status_code == 422


def test_clone_relaunches_with_overrides_merged_into_the_config(team: Team, run: dict) -> None:
    cloned = team.editor.post(
        f"/api/v1/runs/{run['id']}/clone", json={"config": {"learning_rate": 0.01}}
    )
    assert cloned.status_code == 201, cloned.text
    new = cloned.json()
    assert new["id"] != run["id"] and new["name"] == "baseline (clone)"
    assert new["status"] == "queued"
    assert new["config"] == {**run["config"], "learning_rate": 0.01}

    bad = team.editor.post(f"/api/v1/runs/{run['id']}/clone", json={"config": {"batch_size": 0}})
    assert bad.status_code == 400 and "config.batch_size" in bad.json()["detail"]
    unknown = team.editor.post(f"/api/v1/runs/{run['id']}/clone", json={"warmup": 3})
    assert unknown.status_code == 400 and "warmup" in unknown.json()["detail"]
    assert team.viewer.post(f"/api/v1/runs/{run['id']}/clone").status_code == 403
    assert team.outsider.post(f"/api/v1/runs/{run['id']}/clone").status_code == 404
    assert team.viewer.get("/api/v1/runs").json()["total"] == 2


def test_the_config_page_validates_edited_yaml_and_launches_it(team: Team, run: dict) -> None:
    from tests.browser.test_page_routes import HTML, _sign_in

    token = _sign_in(team.editor.client, team.editor)
    browser = team.editor.client
    page = browser.get(f"/runs/{run['id']}/config", headers=HTML)
    assert page.status_code == 200 and "learning_rate: 0.001" in page.text
    detail = browser.get(f"/runs/{run['id']}", headers=HTML)
    assert f'href="/runs/new?clone={run["id"]}"' in detail.text
    prefilled = browser.get(f"/runs/new?clone={run['id']}", headers=HTML)
    assert 'value="baseline (clone)"' in prefilled.text and 'value="0.001"' in prefilled.text

    spec = team.viewer.get(f"/api/v1/runs/{run['id']}/config").text
    broken = browser.post(
        f"/runs/{run['id']}/config",
        headers=HTML,
        data={"csrf_token": token, "config_text": spec.replace("max_steps: 7", "max_steps: [")},
        follow_redirects=False,
    )
    assert broken.status_code == 400 and "not valid YAML or JSON at line" in broken.text
    invalid = browser.post(
        f"/runs/{run['id']}/config",
        headers=HTML,
        data={"csrf_token": token, "config_text": spec.replace("max_steps: 7", "max_steps: -1")},
        follow_redirects=False,
    )
    assert invalid.status_code == 400 and "config.max_steps" in invalid.text
    assert team.viewer.get("/api/v1/runs").json()["total"] == 1, "nothing half-launched"
    edited = browser.post(
        f"/runs/{run['id']}/config",
        headers=HTML,
        data={"csrf_token": token, "config_text": spec.replace("max_steps: 7", "max_steps: 9")},
        follow_redirects=False,
    )
    assert edited.status_code == 303
    new_id = int(edited.headers["location"].rsplit("/", 1)[1])
    assert team.viewer.get(f"/api/v1/runs/{new_id}").json()["config"]["max_steps"] == 9
