"""A classifier's probability figures: ROC and precision-recall curves with their AUC (one
class against the rest, and the macro mean), a reliability diagram with its expected
calibration error, and for two classes a threshold table for the threshold explorer.

Every number comes from scikit-learn on the predicted probabilities, so the product's AUC is
the AUC anyone would compute from the same predictions (tests/engine/test_classifier_curves.py
checks it against scikit-learn directly). The figures are plain JSON: the API returns them as
they are and the version page draws them with uPlot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Reliability diagram: equal-width confidence bins, as scikit-learn's calibration_curve makes.
CALIBRATION_BINS = 10
# The threshold explorer's grid (0.00, 0.01, ..., 1.00): fine enough for a slider, small in JSON.
THRESHOLD_STEPS = 100
# A curve longer than this keeps evenly spaced points plus its ends (a 50,000-row evaluation
# would otherwise store 50,000 points per class); the AUC is always computed on the full curve.
MAX_CURVE_POINTS = 400


def _finite(values: Sequence[float]) -> list[float | None]:
    """JSON has no infinity: ROC's first threshold (+inf, 'predict nothing') becomes null."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def _thin(*columns: Sequence[float]) -> list[list[float]]:
    """At most MAX_CURVE_POINTS rows of parallel columns, keeping the first and the last."""
    n = len(columns[0])
    if n <= MAX_CURVE_POINTS:
        return [list(map(float, c)) for c in columns]
    step = (n - 1) / (MAX_CURVE_POINTS - 1)
    keep = sorted({round(i * step) for i in range(MAX_CURVE_POINTS)} | {0, n - 1})
    return [[float(c[i]) for i in keep] for c in columns]


def curves(
    y_true: Sequence[int], probabilities: Sequence[Sequence[float]], labels: Sequence[str]
) -> dict[str, Any]:
    """Figures of a classifier's predicted probabilities on labelled rows.

    `probabilities[i][c]` is row i's probability of class c (the model's classes, `labels`);
    `y_true[i]` is its true class index, and an index >= len(labels) is a label the model does
    not know: it counts as a negative for every class (the model cannot be right about it),
    as the accuracy counts it wrong.

    Two classes: one ROC/PR curve for the second class (the "positive" one, label index 1),
    `roc_auc` and `average_precision`, and the threshold table. More: one curve per class
    against the rest, and the macro means (`roc_auc_macro`, `average_precision_macro`) over the
    classes that have both positives and negatives among the rows (AUC is undefined otherwise;
    the figures name the classes left out).
    """
    import numpy as np
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probabilities, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or probs.shape[1] != len(labels):
        raise ValueError("probabilities must be one row per label and one column per class")
    binary = len(labels) == 2
    classes = [1] if binary else list(range(len(labels)))
    roc: list[dict[str, Any]] = []
    pr: list[dict[str, Any]] = []
    undefined: list[str] = []
    for c in classes:
        positive = (y == c).astype(int)
        if positive.min(initial=1) == positive.max(initial=0):
            undefined.append(labels[c])
            continue
        fpr, tpr, thresholds = roc_curve(positive, probs[:, c])
        precision, recall, _ = precision_recall_curve(positive, probs[:, c])
        fpr_kept, tpr_kept, thresholds_kept = _thin(fpr, tpr, thresholds)
        recall_kept, precision_kept = _thin(recall, precision)
        roc.append(
            {
                "label": labels[c],
                "auc": float(auc(fpr, tpr)),
                "fpr": fpr_kept,
                "tpr": tpr_kept,
                "thresholds": _finite(thresholds_kept),
            }
        )
        pr.append(
            {
                "label": labels[c],
                "average_precision": float(average_precision_score(positive, probs[:, c])),
                "positives": int(positive.sum()),
                "recall": recall_kept,
                "precision": precision_kept,
            }
        )
    summary: dict[str, float] = {}
    if roc:
        if binary:
            summary["roc_auc"] = roc[0]["auc"]
            summary["average_precision"] = pr[0]["average_precision"]
        else:
            summary["roc_auc_macro"] = sum(r["auc"] for r in roc) / len(roc)
            summary["average_precision_macro"] = sum(p["average_precision"] for p in pr) / len(pr)
    reliability = calibration(y, probs)
    summary["ece"] = reliability["ece"]
    figures: dict[str, Any] = {
        "labels": list(labels),
        "rows": int(y.shape[0]),
        "positive_label": labels[1] if binary else None,
        "roc": roc,
        "pr": pr,
        "undefined_classes": undefined,
        "calibration": reliability,
        "summary": summary,
    }
    if binary:
        figures["thresholds"] = threshold_table(y == 1, probs[:, 1])
    return figures


def calibration(y: Any, probs: Any, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability diagram of the top-label confidence: per bin, the mean confidence of the
    predicted class and how often that prediction was right, with the bin's row count; and the
    expected calibration error, sum over bins of (rows in bin / rows) * |accuracy - confidence|.

    The bins are scikit-learn's `calibration_curve(strategy="uniform")` bins (empty ones are
    left out, as there), so `accuracy`/`confidence` equal its `prob_true`/`prob_pred` on
    (correct, confidence).
    """
    import numpy as np
    from sklearn.calibration import calibration_curve

    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(int)
    if len(y) == 0:
        return {"bins": bins, "accuracy": [], "confidence": [], "count": [], "ece": 0.0}
    # calibration_curve refuses one-class input (all right or all wrong): the diagram is then
    # the bins' own means, which is what it would compute.
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, weights=confidence, minlength=bins)
    mean_acc = np.bincount(which, weights=correct, minlength=bins)
    filled = count > 0
    accuracy = mean_acc[filled] / count[filled]
    conf = mean_conf[filled] / count[filled]
    if correct.min() != correct.max():
        accuracy, conf = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    ece = float(np.sum(count[filled] / len(y) * np.abs(accuracy - conf)))
    return {
        "bins": bins,
        "accuracy": [float(v) for v in accuracy],
        "confidence": [float(v) for v in conf],
        "count": [int(v) for v in count[filled]],
        "ece": ece,
    }


def threshold_table(positive: Any, score: Any, steps: int = THRESHOLD_STEPS) -> dict[str, Any]:
    """For thresholds 0, 1/steps, ..., 1 (a row is predicted positive when its probability is
    at least the threshold): the confusion counts and precision, recall, F1, accuracy. The
    page's slider reads this table; nothing is recomputed in the browser."""
    import numpy as np

    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    table: dict[str, list[float]] = {
        k: [] for k in ("threshold", "tp", "fp", "tn", "fn", "precision", "recall", "f1",
                        "accuracy")
    }  # fmt: skip
    for i in range(steps + 1):
        t = i / steps
        predicted = score >= t
        tp = int(np.sum(predicted & positive))
        fp = int(np.sum(predicted & ~positive))
        fn = int(np.sum(~predicted & positive))
        tn = int(np.sum(~predicted & ~positive))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total = tp + fp + tn + fn
        for key, value in (
            ("threshold", t), ("tp", tp), ("fp", fp), ("tn", tn), ("fn", fn),
            ("precision", precision), ("recall", recall), ("f1", f1),
            ("accuracy", (tp + tn) / total if total else 0.0),
        ):  # fmt: skip
            table[key].append(float(value))
    return table
