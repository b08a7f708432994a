"""The arena: blind votes between two of a workspace's models are stored with the prompt, both
answers, both versions and the winner (DPO pairs later), and make a Bradley–Terry leaderboard
with bootstrap intervals; the page's battle hides which model is A until the vote."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Team
from tests.registry.conftest import dummy_run_with_version

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def two_models(team: Team, installation: Path) -> tuple[dict, dict]:
    _, first = dummy_run_with_version(team, installation)
    _, second = dummy_run_with_version(team, installation)
    return first, second


def _vote(team: Team, a: str, b: str, winner: str, answer_a: str = "red", answer_b: str = "?"):
    return team.editor.post(
        "/api/v1/arena/votes",
        json={
            "messages": PROMPT, "model_a": a, "model_b": b,
            "answer_a": answer_a, "answer_b": answer_b, "winner": winner,
        },
    )  # fmt: skip


def test_votes_keep_the_prompt_both_answers_and_versions_and_page_in_id_order(
    team: Team, two_models: tuple[dict, dict]
) -> None:
    first, second = two_models
    made = _vote(team, first["serving_name"], second["serving_name"], "a", "blue", "no idea")
    assert made.status_code == 201, made.text
    vote = made.json()
    assert vote["messages"] == PROMPT and vote["winner"] == "a"
    assert (vote["answer_a"], vote["answer_b"]) == ("blue", "no idea")
    assert (vote["version_a_id"], vote["version_b_id"]) == (first["id"], second["id"])
    _vote(team, second["serving_name"], first["serving_name"], "tie")
    listed = team.viewer.get("/api/v1/arena/votes").json()
    assert [v["winner"] for v in listed] == ["a", "tie"]
    after = team.viewer.get(f"/api/v1/arena/votes?after_id={listed[0]['id']}").json()
    assert [v["id"] for v in after] == [listed[1]["id"]]
    assert team.outsider.get("/api/v1/arena/votes").json() == []


def test_the_leaderboard_ranks_the_model_that_wins_more_with_intervals_around_its_rating(
    team: Team, two_models: tuple[dict, dict]
) -> None:
    strong, weak = (m["serving_name"] for m in two_models)
    for winner in ["a"] * 8 + ["b"] * 2:
        assert _vote(team, strong, weak, winner).status_code == 201
    assert _vote(team, weak, strong, "both_bad").status_code == 201
    board = team.viewer.get("/api/v1/arena/leaderboard").json()
    assert board["votes"] == 11
    top, bottom = board["models"]
    assert (top["model"], bottom["model"]) == (strong, weak)
    assert (top["wins"], top["losses"], top["ties"]) == (8, 2, 1)
    assert top["rating"] > 1000 > bottom["rating"]
    assert top["rating"] + bottom["rating"] == pytest.approx(2000)
    # 8.5 : 2.5 in points; the prior (one virtual draw each) pulls the odds a little to even.
    odds = 10 ** ((top["rating"] - bottom["rating"]) / 400)
    assert 2.0 < odds < 8.5 / 2.5
    for row in board["models"]:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]


def test_a_vote_is_refused_naming_what_is_wrong(team: Team, two_models: tuple[dict, dict]) -> None:
    name = two_models[0]["serving_name"]
    same = _vote(team, name, name, "a")
    assert same.status_code == 400 and "two different models" in same.json()["detail"]
    unknown = _vote(team, name, "ft:nobody:here", "a")
    assert unknown.status_code == 404 and "ft:nobody:here" in unknown.json()["detail"]
    assert _vote(team, name, two_models[1]["serving_name"], "maybe").status_code == 422
    viewer = team.viewer.post(
        "/api/v1/arena/votes",
        json={"messages": PROMPT, "model_a": name, "model_b": "x", "answer_a": "",
              "answer_b": "", "winner": "a"},
    )  # fmt: skip
    assert viewer.status_code == 403
    assert team.viewer.get("/api/v1/arena/votes").json() == []


def test_a_page_battle_hides_the_sides_until_the_vote_reveals_them(
    team: Team, two_models: tuple[dict, dict]
) -> None:
    from tests.signed_in import HTML, sign_in

    csrf = sign_in(team.editor)
    client = team.editor.client
    names = {m["serving_name"] for m in two_models}
    page = client.get("/arena", headers=HTML).text
    assert 'id="arena"' in page and "No votes yet" in page
    sides = set()
    for _ in range(12):
        battle = client.post("/arena/battle", json={}, headers={"X-CSRF-Token": csrf})
        assert battle.status_code == 200, battle.text
        token = battle.json()["battle"]
        voted = client.post(
            "/arena/vote",
            json={"battle": token, "messages": PROMPT, "answer_a": "red", "answer_b": "blue",
                  "winner": "a"},
            headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert voted.status_code == 200, voted.text
        revealed = voted.json()
        assert {revealed["model_a"], revealed["model_b"]} == names
        sides.add(revealed["model_a"])
    # The order is random: over 12 battles each model was "A" at least once (odds 1 in 2048
    # of failing by chance).
    assert sides == names
    stored = team.viewer.get("/api/v1/arena/votes?limit=1").json()[0]
    assert stored["answer_a"] == "red" and stored["winner"] == "a"
    forged = client.post(
        "/arena/vote",
        json={"battle": token + "x", "messages": PROMPT, "answer_a": "", "answer_b": "",
              "winner": "b"},
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert forged.status_code == 400 and "unknown or expired battle" in forged.text
    board = client.get("/arena", headers=HTML).text
    assert 'data-testid="leaderboard"' in board
