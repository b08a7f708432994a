"""A classifier version's evaluation carries its curves: ROC and precision-recall with AUC,
the reliability diagram with ECE and the threshold table, equal to scikit-learn's on the
model's own predictions; served by the API, drawn on the version page, usable by the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Team

HEADLINES = [
    "rates cut again", "stocks rally", "team loses final", "oil price falls", "storm warning",
    "exams start today", "bank profits up", "coach resigns", "record heat", "markets calm",
]  # fmt: skip


@pytest.fixture
def evaluated(team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An imported two-class classifier evaluated on ten labelled rows by the real task."""
    from app.core.settings import get_settings
    from tests.serving.conftest import build_tiny_classifier
    from workers.registry_tasks import evaluate_version

    imports = tmp_path / "imports"
    build_tiny_classifier(imports / "headlines")
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    created = team.editor.post(
        "/api/v1/models/import", json={"name": "headlines", "path": "headlines"}
    )
    assert created.status_code == 201, created.text
    rows = [
        {"text": text, "label": ("negative", "positive")[i % 3 == 0]}
        for i, text in enumerate(HEADLINES)
    ]
    dataset = team.editor.upload("headlines.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert dataset.status_code == 201, dataset.text
    version_id = created.json()["id"]
    queued = team.editor.post(
        f"/api/v1/model-versions/{version_id}/evaluations",
        json={"dataset_id": dataset.json()["id"]},
    )
    assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    return {
        "version_id": version_id,
        "evaluation_id": queued.json()["id"],
        "rows": rows,
        "folder": imports / "headlines",
    }


def _probabilities(folder: Path, texts: list[str]) -> list[list[float]]:
    """The model's class probabilities, computed here from its files, as anyone would."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.softmax(-1).tolist()


def test_the_api_serves_curves_and_auc_equal_to_scikit_learns_on_the_models_predictions(
    team: Team, evaluated: dict
) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    evaluation_id = evaluated["evaluation_id"]
    answer = team.viewer.get(f"/api/v1/evaluations/{evaluation_id}/figures")
    assert answer.status_code == 200, answer.text
    figures = answer.json()["figures"]
    probs = _probabilities(evaluated["folder"], [r["text"] for r in evaluated["rows"]])
    positive = [r["label"] == "positive" for r in evaluated["rows"]]
    score = [p[1] for p in probs]

    fpr, tpr, _ = roc_curve(positive, score)
    (roc,) = figures["roc"]
    assert roc["label"] == "positive"
    assert roc["fpr"] == pytest.approx(fpr.tolist(), abs=1e-6)
    assert roc["tpr"] == pytest.approx(tpr.tolist(), abs=1e-6)
    metrics = team.viewer.get(f"/api/v1/evaluations/{evaluation_id}").json()["metrics"]
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(positive, score), abs=1e-6)
    assert metrics["average_precision"] == pytest.approx(
        average_precision_score(positive, score), abs=1e-6
    )
    assert 0 <= metrics["ece"] <= 1 and "figures" not in metrics
    assert sum(figures["calibration"]["count"]) == len(evaluated["rows"])
    assert len(figures["thresholds"]["threshold"]) == 101


def test_the_version_page_offers_the_curves_and_a_threshold_explorer(
    team: Team, evaluated: dict
) -> None:
    from tests.signed_in import HTML, sign_in

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/models/versions/{evaluated['version_id']}", headers=HTML).text
    assert "ROC AUC" in page and "ECE" in page
    url = f'data-figures-url="/api/v1/evaluations/{evaluated["evaluation_id"]}/figures"'
    assert url in page
    assert 'data-testid="threshold-explorer"' in page
    assert "/static/js/eval_figures.js" in page and "uPlot.iife.min.js" in page


def test_the_production_gate_can_require_a_roc_auc(
    team: Team, evaluated: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings

    auc = team.viewer.get(f"/api/v1/evaluations/{evaluated['evaluation_id']}").json()["metrics"][
        "roc_auc"
    ]
    url = f"/api/v1/model-versions/{evaluated['version_id']}/stage"
    monkeypatch.setenv("LLMIDE_PRODUCTION_GATE", f"roc_auc>={auc + 0.01:.4f}")
    get_settings.cache_clear()
    refused = team.owner.post(url, json={"stage": "production"})
    assert refused.status_code == 409 and "roc_auc" in refused.json()["detail"]
    monkeypatch.setenv("LLMIDE_PRODUCTION_GATE", f"roc_auc>={auc - 0.01:.4f}")
    get_settings.cache_clear()
    assert team.owner.post(url, json={"stage": "production"}).status_code == 200


def test_a_figures_request_for_another_workspaces_evaluation_is_a_404(
    team: Team, evaluated: dict
) -> None:
    answer = team.outsider.get(f"/api/v1/evaluations/{evaluated['evaluation_id']}/figures")
    assert answer.status_code == 404
