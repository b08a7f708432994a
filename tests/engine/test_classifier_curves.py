"""A classifier's curves and AUC are scikit-learn's on the same predictions: ROC, precision-recall
and average precision per class and their macro mean, the reliability diagram, ECE by its
definition, and the binary threshold table's counts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from workers.engine.classifier_curves import curves


def _predictions(classes: int, rows: int, seed: int) -> tuple[list[int], list[list[float]]]:
    """Noisy but informative probabilities: the true class gets a boost before the softmax."""
    rng = random.Random(seed)
    y, probs = [], []
    for _ in range(rows):
        label = rng.randrange(classes)
        logits = [rng.gauss(0, 1) + (1.5 if c == label else 0.0) for c in range(classes)]
        exp = [np.exp(v) for v in logits]
        probs.append([float(e / sum(exp)) for e in exp])
        y.append(label)
    return y, probs


def test_binary_roc_pr_and_auc_equal_scikit_learns_for_the_second_class() -> None:
    y, probs = _predictions(2, 60, seed=1)
    figures = curves(y, probs, ["negative", "positive"])
    score = np.array(probs)[:, 1]

    fpr, tpr, thresholds = roc_curve(y, score)
    (roc,) = figures["roc"]
    assert roc["label"] == "positive" and figures["positive_label"] == "positive"
    assert roc["fpr"] == pytest.approx(fpr.tolist()) and roc["tpr"] == pytest.approx(tpr.tolist())
    # The first threshold is +inf ("predict nothing"): null in JSON, the rest as scikit-learn's.
    assert roc["thresholds"][0] is None
    assert roc["thresholds"][1:] == pytest.approx(thresholds[1:].tolist())
    assert figures["summary"]["roc_auc"] == pytest.approx(roc_auc_score(y, score))

    precision, recall, _ = precision_recall_curve(y, score)
    (pr,) = figures["pr"]
    assert pr["precision"] == pytest.approx(precision.tolist())
    assert pr["recall"] == pytest.approx(recall.tolist())
    assert figures["summary"]["average_precision"] == pytest.approx(
        average_precision_score(y, score)
    )


def test_several_classes_get_one_vs_rest_curves_and_scikit_learns_macro_auc() -> None:
    labels = ["sport", "finance", "weather"]
    y, probs = _predictions(3, 90, seed=2)
    figures = curves(y, probs, labels)
    matrix = np.array(probs)

    assert [r["label"] for r in figures["roc"]] == labels
    for c, roc in enumerate(figures["roc"]):
        fpr, tpr, _ = roc_curve(np.array(y) == c, matrix[:, c])
        assert roc["fpr"] == pytest.approx(fpr.tolist())
        assert roc["tpr"] == pytest.approx(tpr.tolist())
        assert roc["auc"] == pytest.approx(roc_auc_score(np.array(y) == c, matrix[:, c]))
    assert figures["summary"]["roc_auc_macro"] == pytest.approx(
        roc_auc_score(y, matrix, multi_class="ovr", average="macro")
    )
    assert figures["summary"]["average_precision_macro"] == pytest.approx(
        np.mean([average_precision_score(np.array(y) == c, matrix[:, c]) for c in range(3)])
    )
    assert "thresholds" not in figures  # the threshold explorer is for two classes


def test_the_reliability_diagram_is_scikit_learns_and_ece_weighs_each_bins_gap() -> None:
    y, probs = _predictions(3, 120, seed=3)
    calibration = curves(y, probs, ["a", "b", "c"])["calibration"]
    matrix = np.array(probs)
    confidence = matrix.max(axis=1)
    correct = (matrix.argmax(axis=1) == np.array(y)).astype(int)

    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10)
    assert calibration["accuracy"] == pytest.approx(accuracy.tolist())
    assert calibration["confidence"] == pytest.approx(mean_confidence.tolist())
    assert sum(calibration["count"]) == 120
    gaps = [
        n / 120 * abs(a - c)
        for n, a, c in zip(calibration["count"], accuracy, mean_confidence, strict=True)
    ]
    assert calibration["ece"] == pytest.approx(sum(gaps))


def test_the_threshold_table_counts_rows_at_or_above_each_threshold() -> None:
    y = [0, 0, 1, 1, 1]
    probs = [[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8], [0.1, 0.9]]
    table = curves(y, probs, ["no", "yes"])["thresholds"]
    at = table["threshold"].index(0.5)
    # At 0.5: 0.6, 0.8 and 0.9 are predicted yes; 0.6 is wrong, 0.35 is a missed yes.
    assert (table["tp"][at], table["fp"][at], table["tn"][at], table["fn"][at]) == (2, 1, 1, 1)
    assert table["precision"][at] == pytest.approx(2 / 3)
    assert table["recall"][at] == pytest.approx(2 / 3)
    assert table["accuracy"][at] == pytest.approx(3 / 5)
    assert table["tp"][0] == 3 and table["fp"][0] == 2  # threshold 0: everything is "yes"


def test_a_label_the_model_does_not_know_is_a_negative_for_every_class() -> None:
    # Index 2 is a label outside the model's two classes: it can never be predicted right.
    y = [0, 1, 2, 1, 0, 2]
    probs = [[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.6, 0.4], [0.7, 0.3]]
    figures = curves(y, probs, ["no", "yes"])
    positive = [label == 1 for label in y]
    assert figures["summary"]["roc_auc"] == pytest.approx(
        roc_auc_score(positive, [p[1] for p in probs])
    )
    assert figures["rows"] == 6


def test_a_class_absent_from_the_rows_has_no_auc_and_is_named() -> None:
    y = [0, 1, 0, 1]
    probs = [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]]
    figures = curves(y, probs, ["a", "b", "c"])
    assert figures["undefined_classes"] == ["c"]
    assert [r["label"] for r in figures["roc"]] == ["a", "b"]
    assert figures["summary"]["roc_auc_macro"] == pytest.approx(1.0)
