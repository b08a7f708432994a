"""Votes → preference data: the arena's decisive votes become a preference dataset (the
winner's answer chosen, the other rejected) that a DPO run can train on."""

from __future__ import annotations

import json

from tests.conftest import Team
from tests.registry.test_arena import PROMPT, _vote, two_models  # noqa: F401 (a fixture)


def test_decisive_votes_become_preference_pairs_and_ties_are_left_out(
    team: Team,
    two_models: tuple[dict, dict],  # noqa: F811
) -> None:
    first, second = two_models
    a, b = first["serving_name"], second["serving_name"]
    assert _vote(team, a, b, "a", answer_a="red", answer_b="I cannot").status_code == 201
    assert _vote(team, a, b, "b", answer_a="??", answer_b="blue").status_code == 201
    assert _vote(team, a, b, "tie", answer_a="green", answer_b="green!").status_code == 201
    assert _vote(team, a, b, "both_bad", answer_a="no", answer_b="nope").status_code == 201

    made = team.editor.post("/api/v1/arena/votes/dataset")
    assert made.status_code == 201, made.text
    dataset = made.json()
    assert dataset["format"] == "preference" and dataset["num_rows"] == 2
    rows = [
        json.loads(line)
        for line in team.editor.get(
            f"/api/v1/datasets/{dataset['id']}/download?kind=canonical"
        ).text.splitlines()
    ]
    assert rows == [
        {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": "red"}],
            "rejected": [{"role": "assistant", "content": "I cannot"}],
        },
        {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": "blue"}],
            "rejected": [{"role": "assistant", "content": "??"}],
        },
    ]
    # Ready for DPO: a run launches on it with the preference task by default.
    launched = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset["id"], "base_model": "scratch-nano", "config": {}},
    )
    assert launched.status_code == 201, launched.text


def test_no_decisive_vote_is_a_clear_400_and_viewers_cannot_make_datasets(team: Team) -> None:
    empty = team.editor.post("/api/v1/arena/votes/dataset")
    assert empty.status_code == 400 and "no votes with a winner" in empty.json()["detail"]
    assert team.viewer.post("/api/v1/arena/votes/dataset").status_code == 403


def test_the_arena_page_makes_the_dataset_and_opens_it(
    team: Team,
    two_models: tuple[dict, dict],  # noqa: F811
) -> None:
    from tests.signed_in import HTML, sign_in

    first, second = two_models
    _vote(team, first["serving_name"], second["serving_name"], "a", answer_a="red", answer_b="?")
    csrf = sign_in(team.editor)
    page = team.editor.client.get("/arena", headers=HTML).text
    assert 'data-testid="votes-dataset-form"' in page
    made = team.editor.client.post(
        "/arena/preference-dataset", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert made.status_code == 303 and made.headers["location"].startswith("/datasets/")
