"""Task metrics: classification scores with a confusion matrix, BLEU and ROUGE for generation.

Pure functions of predictions and references, so tests check them against hand-computed values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
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


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per predicted token), capped so it stays finite."""
    if total_tokens <= 0:
        return float("nan")
    return math.exp(min(total_nll / total_tokens, 50.0))


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's single numbers (what a metric chart plots)."""
    return {k: float(v) for k, v in report.items() if isinstance(v, int | float)}


def _rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lower case, runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one pair (as rouge-score computes them
    without stemming; written here to spare the workers nltk, which rouge-score imports)."""
    pred, ref = _rouge_tokens(prediction), _rouge_tokens(reference)
    scores = {}
    for n in (1, 2):
        p, r = _ngrams(pred, n), _ngrams(ref, n)
        scores[f"rouge{n}"] = _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))
    scores["rougeL"] = _f1(_lcs_length(pred, ref), len(pred), len(ref))
    return scores


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-1/2/L F-measures (0-1)."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in rouge(prediction, reference).items():
            totals[name] += value
    n = max(1, len(predictions))
    return {"bleu": float(bleu), **{name: value / n for name, value in totals.items()}}
