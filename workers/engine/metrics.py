"""Task metrics: classification scores with a confusion matrix, BLEU and ROUGE for generation.

Pure functions of predictions and references, so tests check them against hand-computed values.
BLEU is sacrebleu's and ROUGE rouge-score's (with a tokenizer that also reads CJK text).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import cache
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


# Scripts written without spaces between words: scored per character (Han ideographs with
# their extensions and compatibility forms, kana, Hangul syllables and jamo).
_CJK = (
    "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
_TOKEN = re.compile(f"[{_CJK}]|[a-z0-9]+")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_KANA_HANGUL = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\uac00-\ud7af]")


class CjkAwareTokenizer:
    """rouge-score's tokenisation (lower case, runs of Latin letters and digits) plus one token
    per CJK character: its default keeps only [a-z0-9], so Chinese text scored 0 even when
    identical to the reference. Text without CJK gets exactly the default tokens."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


def bleu_tokenizer(references: Sequence[str]) -> str:
    """sacrebleu's tokenizer for these references: "zh" (each Chinese character a word) when
    they hold Han characters, "char" for Japanese kana or Korean (sacrebleu's own tokenizers for
    those need MeCab), its default "13a" otherwise."""
    text = "".join(references)
    if _KANA_HANGUL.search(text):
        return "char"
    if _HAN.search(text):
        return "zh"
    return "13a"


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one pair (rouge-score, no stemming, CJK text
    per character)."""
    return {name: score.fmeasure for name, score in _scorer().score(reference, prediction).items()}


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(
        ["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=CjkAwareTokenizer()
    )


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100; Chinese tokenised per character) and mean ROUGE-1/2/L
    F-measures (0-1)."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(
        list(predictions), [list(references)], tokenize=bleu_tokenizer(references)
    ).score
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in rouge(prediction, reference).items():
            totals[name] += value
    n = max(1, len(predictions))
    return {"bleu": float(bleu), **{name: value / n for name, value in totals.items()}}


def token_classification_report(
    y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Entity-level precision, recall and F1 per type, micro and macro (seqeval, CoNLL's
    reading of BIO: an I-X after O starts an entity), token accuracy, and a confusion matrix
    of entity types per word (B-/I- stripped, "O" last).

    confusion[i][j] counts words of true type i predicted as type j; seqeval's own figures
    are not recomputed here, so they equal a direct seqeval call on the same sequences.
    """
    from seqeval.metrics import accuracy_score
    from seqeval.metrics import classification_report as seqeval_report

    report = seqeval_report(
        [list(s) for s in y_true], [list(s) for s in y_pred], output_dict=True, zero_division=0
    )
    types = sorted({t[2:] for seq in (*y_true, *y_pred) for t in seq if t != "O" and len(t) > 2})
    per_type = {
        label: {
            "precision": float(report[label]["precision"]),
            "recall": float(report[label]["recall"]),
            "f1": float(report[label]["f1-score"]),
            "support": float(report[label]["support"]),
        }
        for label in types
        if label in report
    }
    for label in types:  # a type only ever predicted, never present: seqeval leaves it out
        per_type.setdefault(label, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0})
    names = [*types, "O"]
    index = {name: i for i, name in enumerate(names)}
    confusion = [[0] * len(names) for _ in names]
    for gold_seq, pred_seq in zip(y_true, y_pred, strict=True):
        for gold, pred in zip(gold_seq, pred_seq, strict=True):
            confusion[index[gold[2:] if gold != "O" else "O"]][
                index[pred[2:] if pred != "O" else "O"]
            ] += 1
    micro = report.get("micro avg", {})
    macro = report.get("macro avg", {})
    return {
        "kind": "token_classification",
        "precision_micro": float(micro.get("precision", 0.0)),
        "recall_micro": float(micro.get("recall", 0.0)),
        "f1_micro": float(micro.get("f1-score", 0.0)),
        "precision_macro": float(macro.get("precision", 0.0)),
        "recall_macro": float(macro.get("recall", 0.0)),
        "f1_macro": float(macro.get("f1-score", 0.0)),
        "token_accuracy": float(
            accuracy_score([list(s) for s in y_true], [list(s) for s in y_pred])
        )
        if any(y_true)
        else 0.0,
        "per_type": per_type,
        "labels": names,
        "confusion_matrix": confusion,
    }
