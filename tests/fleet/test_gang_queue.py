"""Multi-node runs in the queue: a run on N nodes holds N GPU worker slots, starts only when N
are free (all nodes or none), and is not overtaken by smaller runs while it waits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Persona, Team, text_jsonl
from tests.queue.test_run_queue import active_names, dispatch, set_slots, waiting_names


def launch(persona: Persona, dataset_id: int, name: str, **config: Any) -> Any:
    body = {"dataset_id": dataset_id, "name": name, "config": {"max_steps": 2, **config}}
    return persona.post("/api/v1/runs", json=body)


def test_a_two_node_run_waits_for_two_free_slots_and_nothing_smaller_overtakes_it(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = int(team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"])
    set_slots(monkeypatch, 2)
    first = launch(team.editor, dataset, "single")
    assert first.status_code == 201, first.text
    gang = launch(team.editor, dataset, "gang", nodes=2)
    assert gang.status_code == 201, gang.text
    assert launch(team.editor, dataset, "later").status_code == 201
    # One slot is free, but the two-node run needs two: it waits, and so does the run behind
    # it, though it would fit (else a big run could wait for ever behind small ones).
    assert active_names(team.editor) == ["single"]
    assert waiting_names(team.editor) == ["gang", "later"]
    assert dispatch() == []
    reason = team.editor.get("/api/v1/queue").json()["waiting_reason"]
    assert reason == "the next run needs 2 nodes at once and 1 of 2 slot(s) are free"
    # The first run ends: both slots are free, the gang takes both at once.
    assert team.editor.post(f"/api/v1/runs/{first.json()['id']}/cancel").status_code == 200
    assert active_names(team.editor) == ["gang"]
    assert waiting_names(team.editor) == ["later"]
    assert dispatch() == []


def test_a_run_on_more_nodes_than_the_fleet_has_slots_is_refused_by_name(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = int(team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"])
    set_slots(monkeypatch, 2)
    refused = launch(team.editor, dataset, "too big", nodes=3)
    assert refused.status_code == 400, refused.text
    assert "nodes=3" in refused.text and "LLMIDE_MAX_CONCURRENT_RUNS" in refused.text
    assert team.editor.get("/api/v1/runs").json()["items"] == []
    assert launch(team.editor, dataset, "zero", nodes=0).status_code in (400, 422)
