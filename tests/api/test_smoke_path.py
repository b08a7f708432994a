"""The first steps of the path through the API: sign-up, upload, launch (no worker here)."""

from __future__ import annotations

from tests.conftest import Team, text_jsonl


def test_editor_uploads_dataset_and_launches_queued_run(team: Team, backend: str) -> None:
    uploaded = team.editor.upload("corpus.jsonl", text_jsonl(30))
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert dataset["num_rows"] == 30 and dataset["format"] == "text"
    assert dataset["preview"][0] == {"text": "the cat sat on the mat"}

    launched = team.editor.post(
        "/api/v1/runs", json={"dataset_id": dataset["id"], "config": {"max_steps": 5}}
    )
    assert launched.status_code == 201, launched.text
    run = launched.json()
    assert run["status"] == "queued" and run["config"]["max_steps"] == 5

    listed = team.viewer.get("/api/v1/runs").json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]
