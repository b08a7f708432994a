"""The classifier playground and the deployments page's traffic figures, against the real
inference process: a classifier is tried in the browser (text in, label and probabilities out),
its deployment shows /predict examples, and every request is counted, refused ones included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Team
from tests.serving.conftest import RegisterVersion, build_tiny_classifier, inference_process
from tests.serving.test_deployments import chat, deploy
from tests.signed_in import HTML, sign_in


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    """Deployment ids restart in each test database; the process-wide counters must too."""
    from app.services.serving import metrics as serving_metrics

    serving_metrics.REQUESTS.clear()
    yield
    serving_metrics.REQUESTS.clear()


def test_a_classifier_is_tried_in_its_own_playground_with_the_label_and_every_probability(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    version = register_version(build_tiny_classifier)
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"])
        expected = team.owner.post(
            f"/api/v1/deployments/{dep['id']}/predict", json={"inputs": "the cat sat"}
        ).json()["predictions"][0]

        csrf = sign_in(team.viewer)
        client = team.viewer.client
        # "Try in playground" for a classifier opens the classifier playground, not a chat.
        page = client.get(f"/playground?model={version['serving_name']}", headers=HTML)
        assert page.status_code == 200
        assert "Classifier playground" in page.text
        assert 'id="cls-text"' in page.text and 'id="chat-input"' not in page.text

        answer = client.post(
            "/playground/classify",
            data={"model": version["serving_name"], "text": "the cat sat", "csrf_token": csrf},
            headers=HTML,
        )
        assert answer.status_code == 200, answer.text[:500]
        label = re.search(r'data-testid="predicted-label"><strong>([^<]+)</strong>', answer.text)
        assert label and label.group(1) == expected["label"]
        rows = re.findall(r"<tr><td>(\w+)</td><td class=\"right mono\">([0-9.]+)</td>", answer.text)
        assert {name for name, _ in rows} == {"negative", "positive"}
        for name, shown in rows:
            assert float(shown) == pytest.approx(expected["scores"][name], abs=1e-4)
        # Highest probability first.
        assert [float(p) for _, p in rows] == sorted((float(p) for _, p in rows), reverse=True)

        empty = client.post(
            "/playground/classify",
            data={"model": version["serving_name"], "text": "  ", "csrf_token": csrf},
            headers=HTML,
        )
        assert empty.status_code == 400 and "Write a text to classify." in empty.text

        # The chat playground leaves the classifier out and points to its playground.
        chat_page = client.get("/playground", headers=HTML).text
        assert "/playground/classify" in chat_page
        assert f'<option value="{version["serving_name"]}"' not in chat_page

        # Its deployment shows /predict examples, not a chat example.
        deployments_page = client.get("/deployments", headers=HTML).text
        assert f"/api/v1/deployments/{dep['id']}/predict" in deployments_page
        assert "chat/completions \\" not in deployments_page
        assert "/playground/classify?model=" in deployments_page


def test_a_chat_deployment_keeps_its_chat_example(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    version = register_version()
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"])
        sign_in(team.owner)
        page = team.owner.client.get("/deployments", headers=HTML).text
        assert "/chat/completions \\" in page
        assert f"/api/v1/deployments/{dep['id']}/predict" not in page
        # The name field spans the form's width; long serving names carry a tooltip.
        assert 'placeholder="the version\'s serving name" style="width: 100%"' in page
        assert f'title="{version["serving_name"]}"' in page
        playground = team.owner.client.get("/playground", headers=HTML).text
        assert 'class="form-grid sampling-grid"' in playground


def traffic(team: Team, deployment_id: int) -> str:
    sign_in(team.viewer)
    page = team.viewer.client.get("/deployments", headers=HTML).text
    team.viewer.client.cookies.clear()
    match = re.search(r'<span class="traffic">([^<]+)</span>', page)
    return match.group(1) if match else "no requests yet"


def test_rejected_chat_requests_are_counted_and_shown(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    version = register_version()
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"], max_new_tokens=8)
        name = version["serving_name"]
        for _ in range(7):  # above the deployment's limit: refused by the web (400)
            assert chat(team, name, max_tokens=64).status_code == 400
        assert chat(team, name, stop=["a", "b", "c", "d", "e"]).status_code == 400
        assert chat(team, name, not_an_openai_field=True).status_code == 400  # unknown: refused
        assert chat(team, name, max_tokens=4).status_code == 200

        assert traffic(team, dep["id"]) == "10 req · 9 rejected · 0 err"
        stats = team.owner.get(f"/api/v1/deployments/{dep['id']}").json()["stats"]
        assert (stats["requests"], stats["rejected"], stats["errors"]) == (10, 9, 0)


def test_predict_calls_are_counted_on_a_classifier_deployment(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    version = register_version(build_tiny_classifier)
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"])
        url = f"/api/v1/deployments/{dep['id']}/predict"
        for _ in range(5):
            assert team.owner.post(url, json={"inputs": "a dog"}).status_code == 200
        assert team.owner.post(url, json={"inputs": []}).status_code == 400

        assert traffic(team, dep["id"]) == "6 req · 1 rejected · 0 err"
