"""K-fold cross-validation of a small classifier: k fold runs on stratified folds, trained for
real in this process (as a worker's pool process runs `train_run`), per-fold and mean ± std
metrics, no fold registered until the user picks one."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Team

CONFIG = {"max_steps": 2, "batch_size": 4, "block_size": 32, "eval_steps": 2}


def _rows() -> list[dict[str, str]]:
    # 16 positive and 8 negative rows: stratified folds keep that 2:1 in each validation split.
    good = ["good", "great", "lovely", "fine"]
    bad = ["bad", "awful"]
    rows = [{"text": f"a {good[i % 4]} day number {i}", "label": "pos"} for i in range(16)]
    rows += [{"text": f"an {bad[i % 2]} night number {i}", "label": "neg"} for i in range(8)]
    return rows


@pytest.fixture
def dataset_id(team: Team) -> int:
    content = "\n".join(json.dumps(r) for r in _rows())
    uploaded = team.editor.upload("reviews.jsonl", content)
    assert uploaded.status_code == 201, uploaded.text
    return int(uploaded.json()["id"])


def _create(team: Team, dataset_id: int, **body: Any) -> Any:
    payload = {"dataset_id": dataset_id, "base_model": "scratch-nano", "config": CONFIG, **body}
    return team.editor.post("/api/v1/cross-validations", json=payload)


def _fold_rows(version_id: int) -> list[dict[str, Any]]:
    from app.db.models import DatasetVersion
    from app.db.session import session_scope
    from app.services import artifacts

    with session_scope() as session:
        version = session.get(DatasetVersion, version_id)
        assert version is not None
        text = artifacts.existing(version.storage_key).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_stratified_k_fold_trains_k_runs_and_reports_each_fold_and_mean_and_std(
    team: Team, dataset_id: int
) -> None:
    from workers.tasks import train_run

    created = _create(team, dataset_id, k=3, seed=7, name="reviews cv")
    assert created.status_code == 201, created.text
    cv = created.json()
    assert cv["stratified"] is True and cv["status"] == "running" and len(cv["folds"]) == 3

    # Every row is validation in exactly one fold, and each fold keeps the labels' 2:1.
    seen: Counter[str] = Counter()
    for fold in cv["folds"]:
        rows = _fold_rows(fold["dataset_version_id"])
        held = [r for r in rows if r["split"] == "validation"]
        labels = Counter(r["label"] for r in held)
        assert len(rows) == 24 and labels["neg"] in (2, 3) and labels["pos"] in (5, 6)
        seen.update(r["text"] for r in held)
    assert sorted(seen.values()) == [1] * 24

    for fold in cv["folds"]:
        train_run.apply(args=[fold["run_id"]])
    done = team.viewer.get(f"/api/v1/cross-validations/{cv['id']}").json()
    assert done["status"] == "succeeded", done
    accuracies = [f["metrics"]["eval_accuracy"] for f in done["folds"]]
    summary = done["metrics"]["eval_accuracy"]
    assert summary["mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["std"] == pytest.approx(statistics.stdev(accuracies))
    assert summary["folds"] == 3
    from tests.signed_in import HTML, sign_in

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/cross-validations/{cv['id']}", headers=HTML).text
    mean_row = page[page.index('data-testid="cv-mean"') :]
    assert "Mean ± std (3 folds)" in mean_row and "±" in mean_row
    assert "Register this fold" not in page  # a viewer registers nothing
    listing = team.viewer.client.get("/cross-validations", headers=HTML).text
    assert "reviews cv" in listing and "accuracy" in listing
    # No fold was registered on its own; the user registers the one they choose.
    assert team.viewer.get("/api/v1/models").json() == []
    registered = team.editor.post(
        f"/api/v1/cross-validations/{cv['id']}/register", json={"fold": 2}
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["run_id"] == done["folds"][1]["run_id"]
    again = team.viewer.get(f"/api/v1/cross-validations/{cv['id']}").json()
    assert again["registered_version_id"] == registered.json()["id"]


def test_a_cross_validation_is_refused_naming_what_does_not_fit(
    team: Team, dataset_id: int
) -> None:
    too_many = _create(team, dataset_id, k=9)  # 8 negatives cannot fill 9 stratified folds
    assert too_many.status_code == 400 and "rarest has 8" in too_many.json()["detail"]
    out_of_range = _create(team, dataset_id, k=1)
    assert out_of_range.status_code == 422
    viewer = team.viewer.post(
        "/api/v1/cross-validations", json={"dataset_id": dataset_id, "config": CONFIG}
    )
    assert viewer.status_code == 403
    assert team.editor.get("/api/v1/runs").json()["total"] == 0
    assert team.outsider.get("/api/v1/cross-validations").json() == []
