"""Task metrics: classification scores with a confusion matrix, BLEU and ROUGE for generation.

Pure functions of predictions and references, so tests check them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, the same per class, and the confusion matrix.

    confusion[i][j] counts examples of true class i predicted as class j. A class never
    predicted has precision 0 (and one never present recall 0), the usual zero_division=0.
    """
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        confusion[t][p] += 1
    total = len(y_true)
    correct = sum(confusion[i][i] for i in range(k))
    per_class: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(k))
        actual = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": float(actual),
        }
    macro = {
        name: sum(c[name] for c in per_class.values()) / k if k else 0.0
        for name in ("precision", "recall", "f1")
    }
    return {
        "accuracy": correct / total if total else 0.0,
        "precision_macro": macro["precision"],
        "recall_macro": macro["recall"],
        "f1_macro": macro["f1"],
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": confusion,
    }


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's single numbers (what a metric chart plots)."""
    return {k: float(v) for k, v in report.items() if isinstance(v, int | float)}


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-1/2/L F-measures (rouge-score, 0-1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    n = max(1, len(predictions))
    return {"bleu": float(bleu), **{name: value / n for name, value in totals.items()}}
