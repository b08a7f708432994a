"""LLM-as-judge: a causal LM reads a question with answers and gives a verdict — pairwise
(which of two answers is better, asked twice with the answers swapped, to cancel the order
bias judges have) or by rubric (a 1–10 score per answer) — and its verdicts are compared with
people's votes on the same pairs.

Items in, verdicts out: `judge(model_dir, items, mode=..., rubric=..., progress=...)` with
items `{"question", "answer_a", "answer_b", "human"}` (human: "a", "b" or "tie").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAIRWISE_PROMPT = (
    "You are a careful and impartial judge. Read the question and the two answers, then say "
    "which answer is better. Reply with only one of: A, B, tie.\n\n"
    "Question: {question}\n\nAnswer A: {first}\n\nAnswer B: {second}\n\nBetter answer:"
)
RUBRIC_PROMPT = (
    "You are a careful and impartial judge. Score the answer to the question from 1 (worst) to "
    "10 (best) by this rubric: {rubric}\nReply with only the number.\n\n"
    "Question: {question}\n\nAnswer: {answer}\n\nScore:"
)
DEFAULT_RUBRIC = "correct, helpful, honest and to the point"
MAX_NEW_TOKENS = 8
_VERDICT = re.compile(r"\b(tie|a|b)\b", re.IGNORECASE)
_SCORE = re.compile(r"\b(10|[1-9])\b")


def parse_verdict(text: str) -> str | None:
    """ "a", "b" or "tie" from the judge's reply (its first such word), None if it gave none."""
    found = _VERDICT.search(text)
    return found.group(1).lower() if found else None


def parse_score(text: str) -> int | None:
    found = _SCORE.search(text)
    return int(found.group(1)) if found else None


def combine(first: str | None, swapped: str | None) -> str | None:
    """One verdict from the two orders: the same answer preferred in both is that answer's win;
    anything else (a tie, a flip with the order, an unreadable reply) is a tie. None when
    neither reply could be read."""
    if first is None and swapped is None:
        return None
    flipped = {"a": "b", "b": "a"}.get(swapped or "", swapped)
    if first == flipped and first in ("a", "b"):
        return first
    return "tie"


def judge(
    model_dir: Path,
    items: list[dict[str, Any]],
    *,
    mode: str,
    rubric: str | None,
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(metrics, samples, figures): the judge's verdict per item and its agreement with people.

    metrics: `judge_agreement` (share of items with a human winner where the judge picked the
    same answer), `judge_decided` (items where the judge picked one), `judge_consistency`
    (pairwise: share of items whose two orders agreed), `judge_items`, `judge_unreadable`.
    """
    import torch

    from workers.engine.evaluation import _generate
    from workers.engine.export import load_causal_lm

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_dir)
    context = int(
        getattr(model.config, "n_positions", None)
        or getattr(model.config, "max_position_embeddings", None)
        or 2048
    )

    def ask(prompt: str) -> str:
        # The judge prompt as a user turn (chat-templated when the model has a template).
        return _generate(model, tokenizer, prompt, MAX_NEW_TOKENS, context)

    verdicts: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        record: dict[str, Any]
        if mode == "pairwise":
            first_reply = ask(
                PAIRWISE_PROMPT.format(
                    question=item["question"], first=item["answer_a"], second=item["answer_b"]
                )
            )
            swapped_reply = ask(
                PAIRWISE_PROMPT.format(
                    question=item["question"], first=item["answer_b"], second=item["answer_a"]
                )
            )
            first, swapped = parse_verdict(first_reply), parse_verdict(swapped_reply)
            verdict = combine(first, swapped)
            consistent = verdict in ("a", "b") or (first == "tie" and swapped == "tie")
            record = {"verdict": verdict, "replies": [first_reply, swapped_reply],
                      "consistent": consistent}  # fmt: skip
        else:
            text = rubric or DEFAULT_RUBRIC
            replies = [
                ask(RUBRIC_PROMPT.format(rubric=text, question=item["question"], answer=answer))
                for answer in (item["answer_a"], item["answer_b"])
            ]
            scores = [parse_score(r) for r in replies]
            a_score, b_score = scores
            if a_score is None or b_score is None:
                verdict = None if a_score is None and b_score is None else "tie"
            else:
                verdict = "a" if a_score > b_score else "b" if b_score > a_score else "tie"
            record = {"verdict": verdict, "replies": replies, "scores": scores,
                      "consistent": None}  # fmt: skip
        verdicts.append({**item, **record})
        progress(0.1 + 0.85 * (index + 1) / max(len(items), 1))
    metrics = agreement(verdicts, mode)
    samples = [
        {
            "prompt": v["question"][-600:],
            "output": f"judge: {v['verdict'] or 'unreadable'} ({_replies(v['replies'])})",
            "expected": f"people: {v['human']}",
        }
        for v in verdicts[:5]
    ]  # fmt: skip
    figures = {
        "mode": mode,
        "rubric": (rubric or DEFAULT_RUBRIC) if mode == "rubric" else None,
        "items": [
            {
                k: v[k]
                for k in (
                    "vote_id",
                    "model_a",
                    "model_b",
                    "human",
                    "verdict",
                    "consistent",
                    "scores",
                )
                if k in v
            }  # fmt: skip
            for v in verdicts
        ],
    }
    return metrics, samples, figures


def generate_answers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """A version's greedy replies to the prompts (what a pairwise match of two versions judges)."""
    import torch

    from workers.engine.evaluation import _generate
    from workers.engine.export import load_causal_lm

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_dir)
    context = int(
        getattr(model.config, "n_positions", None)
        or getattr(model.config, "max_position_embeddings", None)
        or 2048
    )
    tokens = min(max_new_tokens, max(1, context // 2))
    return [_generate(model, tokenizer, prompt, tokens, context) for prompt in prompts]


def _replies(replies: list[str]) -> str:
    return " | ".join(r.strip()[:40] for r in replies)


def agreement(verdicts: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """How often the judge sided with people, over the items people decided (a or b)."""
    decided_by_people = [v for v in verdicts if v["human"] in ("a", "b")]
    same = sum(1 for v in decided_by_people if v["verdict"] == v["human"])
    metrics = {
        "judge_items": float(len(verdicts)),
        "judge_agreement": same / len(decided_by_people) if decided_by_people else float("nan"),
        "judge_decided": float(sum(1 for v in verdicts if v["verdict"] in ("a", "b"))),
        "judge_unreadable": float(sum(1 for v in verdicts if v["verdict"] is None)),
    }
    if mode == "pairwise" and verdicts:
        metrics["judge_consistency"] = sum(1 for v in verdicts if v["consistent"]) / len(verdicts)
    if verdicts:
        # Who the judge preferred: A's share of the items, a tie counting half (a match of two
        # versions has no people's votes, so this is its result).
        wins_a = sum(1 for v in verdicts if v["verdict"] == "a")
        ties = sum(1 for v in verdicts if v["verdict"] == "tie")
        metrics["judge_wins_a"] = float(wins_a)
        metrics["judge_wins_b"] = float(sum(1 for v in verdicts if v["verdict"] == "b"))
        metrics["judge_ties"] = float(ties)
        metrics["judge_win_rate_a"] = (wins_a + 0.5 * ties) / len(verdicts)
    return metrics
