"""Metric functions shared by training-time and registry evaluations (one definition each)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    if total_tokens <= 0:
        return float("nan")
    return math.exp(min(total_nll / total_tokens, 50.0))


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    if not labels:
        return float("nan")
    return sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes in either list."""
    classes = sorted(set(labels) | set(predictions))
    if not classes:
        return float("nan")
    scores = []
    for cls in classes:
        tp = sum(p == cls and t == cls for p, t in zip(predictions, labels, strict=True))
        fp = sum(p == cls and t != cls for p, t in zip(predictions, labels, strict=True))
        fn = sum(p != cls and t == cls for p, t in zip(predictions, labels, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) of hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of whitespace tokens), 0-1."""
    if not references:
        return float("nan")
    total = 0.0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        lcs = _lcs(h, r)
        if lcs:
            precision, recall = lcs / len(h), lcs / len(r)
            total += 2 * precision * recall / (precision + recall)
    return total / len(references)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
