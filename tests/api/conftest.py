"""Fixtures the run API tests share."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl


@pytest.fixture
def run_id(team: Team) -> int:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    launched = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset_id, "config": {"max_steps": 40, "block_size": 16}},
    )
    assert launched.status_code == 201, launched.text
    return int(launched.json()["id"])
