"""LLM-as-judge: a version judges the workspace's arena votes, pairwise with the answers asked
in both orders (a judge that always prefers the first answer earns no wins) or by rubric
scores, and its verdicts are compared with the people's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Team
from workers.engine.judge import combine, parse_score, parse_verdict

PROMPT = [{"role": "user", "content": "What colour is the sky?"}]


def test_the_two_orders_make_one_verdict_and_a_position_bias_cancels_out() -> None:
    assert combine("a", "b") == "a"  # A first, then the same answer in second place: A
    assert combine("b", "a") == "b"
    assert combine("a", "a") == "tie"  # "always the first one": no win for either
    assert combine("tie", "tie") == "tie" and combine("a", None) == "tie"
    assert combine(None, None) is None
    assert parse_verdict(" B. Because it is longer") == "b"
    assert parse_verdict("Tie.") == "tie" and parse_verdict("???") is None
    assert parse_score("Score: 7/10") == 7 and parse_score("none") is None


@pytest.fixture
def judge_and_votes(team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A tiny causal LM imported as the judge, and four arena votes between two versions."""
    from app.core.settings import get_settings
    from tests.inference.test_inference_server import build_tiny_model

    imports = tmp_path / "imports"
    for name, seed in (("judge", 0), ("left", 1), ("right", 2)):
        build_tiny_model(imports / name, positions=256, seed=seed)
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    made = {}
    for name in ("judge", "left", "right"):
        created = team.editor.post("/api/v1/models/import", json={"name": name, "path": name})
        assert created.status_code == 201, created.text
        made[name] = created.json()
    for winner, a_text in (("a", "blue"), ("b", "green"), ("a", "blue sky"), ("tie", "grey")):
        vote = team.editor.post(
            "/api/v1/arena/votes",
            json={
                "messages": PROMPT, "model_a": made["left"]["serving_name"],
                "model_b": made["right"]["serving_name"], "answer_a": a_text,
                "answer_b": "it depends", "winner": winner,
            },
        )  # fmt: skip
        assert vote.status_code == 201, vote.text
    return made


@pytest.mark.parametrize("mode", ["pairwise", "rubric"])
def test_a_judge_evaluation_reports_its_agreement_with_the_peoples_votes(
    team: Team, judge_and_votes: dict, mode: str
) -> None:
    from workers.registry_tasks import evaluate_version

    judge_id = judge_and_votes["judge"]["id"]
    queued = team.editor.post(
        f"/api/v1/model-versions/{judge_id}/judge-evaluations", json={"mode": mode}
    )
    assert queued.status_code == 202, queued.text
    assert queued.json()["kind"] == "judge"
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    figures = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}/figures").json()
    items = figures["figures"]["items"]
    metrics = done["metrics"]
    assert metrics["judge_items"] == 4 and len(items) == 4
    assert all(i["verdict"] in ("a", "b", "tie", None) for i in items)
    # Agreement is over the three votes people decided (the tie is left out).
    decided = [i for i in items if i["human"] in ("a", "b")]
    assert len(decided) == 3
    same = sum(1 for i in decided if i["verdict"] == i["human"])
    assert metrics["judge_agreement"] == pytest.approx(same / 3)
    if mode == "pairwise":
        assert 0 <= metrics["judge_consistency"] <= 1
    else:
        assert all(len(i["scores"]) == 2 for i in items)


def test_a_judge_is_refused_without_votes_or_with_a_rubric_it_would_not_use(
    team: Team, judge_and_votes: dict
) -> None:
    url = f"/api/v1/model-versions/{judge_and_votes['judge']['id']}/judge-evaluations"
    refused = team.editor.post(url, json={"mode": "pairwise", "rubric": "be kind"})
    assert refused.status_code == 400 and "rubric" in refused.json()["detail"]
    assert team.viewer.post(url, json={"mode": "pairwise"}).status_code == 403
    outsider = team.outsider.post(url, json={"mode": "pairwise"})
    assert outsider.status_code == 404


def test_the_arena_page_sends_its_votes_to_a_judge_and_the_version_page_shows_the_result(
    team: Team, judge_and_votes: dict
) -> None:
    from tests.signed_in import HTML, sign_in
    from workers.registry_tasks import evaluate_version

    csrf = sign_in(team.editor)
    page = team.editor.client.get("/arena", headers=HTML).text
    assert 'data-testid="judge-form"' in page and 'data-testid="leaderboard"' in page
    judge = judge_and_votes["judge"]
    posted = team.editor.client.post(
        "/arena/judge",
        data={"csrf_token": csrf, "model": judge["serving_name"], "mode": "pairwise"},
        headers=HTML,
        follow_redirects=False,
    )
    assert posted.status_code == 303, posted.text
    assert posted.headers["location"].endswith(f"/models/versions/{judge['id']}")
    [queued] = team.editor.get(f"/api/v1/model-versions/{judge['id']}/evaluations").json()
    assert evaluate_version.apply(args=[queued["id"]]).get() == "succeeded"
    version_page = team.editor.client.get(f"/models/versions/{judge['id']}", headers=HTML).text
    assert (
        'data-testid="judge-evaluations"' in version_page and "Agrees with people" in version_page
    )


def test_a_judge_compares_two_versions_answers_in_a_match_and_reports_who_it_preferred(
    team: Team, judge_and_votes: dict
) -> None:
    from workers.registry_tasks import evaluate_version

    left, right = judge_and_votes["left"], judge_and_votes["right"]
    url = f"/api/v1/model-versions/{judge_and_votes['judge']['id']}/judge-evaluations"
    body = {"mode": "pairwise", "versions": [left["id"], right["id"]],
            "prompts": ["Say hello.", "Name a fruit."], "max_new_tokens": 8}  # fmt: skip
    queued = team.editor.post(url, json=body)
    assert queued.status_code == 202, queued.text
    assert queued.json()["options"]["name"].startswith(left["serving_name"])
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    metrics = done["metrics"]
    assert metrics["judge_items"] == 2 and "judge_agreement" not in metrics  # no people here
    wins = metrics["judge_wins_a"] + metrics["judge_wins_b"] + metrics["judge_ties"]
    assert wins + metrics["judge_unreadable"] == 2
    assert 0 <= metrics["judge_win_rate_a"] <= 1
    same = team.editor.post(url, json={**body, "versions": [left["id"], left["id"]]})
    assert same.status_code == 400 and "two different versions" in same.json()["detail"]
