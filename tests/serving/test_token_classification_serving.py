"""An entity (NER) model deployed behind the real inference process: /predict answers each
entity with its label, score and character offsets into the text sent — exact on Chinese and
mixed text — the playground highlights them, and the deployment page shows the entity call.
The model is hand-built (tests/serving/conftest.build_tiny_ner_model): its answer is known."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Team
from tests.serving.conftest import RegisterVersion, build_tiny_ner_model, inference_process
from tests.serving.test_deployments import deploy
from tests.signed_in import HTML, sign_in

TEXT = "李明在北京工作，Ada lives in London。"


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    from app.services.serving import metrics as serving_metrics

    serving_metrics.REQUESTS.clear()
    yield
    serving_metrics.REQUESTS.clear()


def test_predict_answers_entities_at_exact_character_offsets_of_chinese_text(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    version = register_version(build_tiny_ner_model)
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"])
        answer = team.viewer.post(
            f"/api/v1/deployments/{dep['id']}/predict",
            json={"inputs": [TEXT, "北京", "没有实体", "  李明  "]},
        )
        assert answer.status_code == 200, answer.text
        found = [p["entities"] for p in answer.json()["predictions"]]
        assert [(e["label"], e["start"], e["end"], e["text"]) for e in found[0]] == [
            ("PER", 0, 2, "李明"),
            ("LOC", 3, 5, "北京"),
            ("PER", 8, 11, "Ada"),
            ("LOC", 21, 27, "London"),
        ]
        for text, entities in zip([TEXT, "北京", "没有实体", "  李明  "], found, strict=True):
            for entity in entities:
                assert text[entity["start"] : entity["end"]] == entity["text"]
                assert 0.5 < entity["score"] <= 1.0
        assert found[1] == [{**found[1][0], "label": "LOC", "start": 0, "end": 2}]
        assert found[2] == []
        assert [(e["start"], e["end"]) for e in found[3]] == [(2, 4)]  # spaces counted

        # The playground's entity mode highlights the same spans.
        csrf = sign_in(team.viewer)
        page = team.viewer.client.post(
            "/playground/classify",
            data={"model": version["serving_name"], "text": TEXT, "csrf_token": csrf},
            headers=HTML,
        )
        assert page.status_code == 200, page.text[:500]
        marks = re.findall(r'<mark class="entity" data-label="(\w+)"[^>]*>([^<]+)<span', page.text)
        assert marks == [("PER", "李明"), ("LOC", "北京"), ("PER", "Ada"), ("LOC", "London")]
        assert 'data-testid="entities"' in page.text and "21–27" in page.text

        # The deployment page shows the call that answers entities.
        listing = team.viewer.client.get("/deployments", headers=HTML).text
        assert f"/api/v1/deployments/{dep['id']}/predict" in listing
        assert "an entity model: <code>/predict</code> answers entities" in listing
        assert "entity[&#34;start&#34;]" in listing or 'entity["start"]' in listing
