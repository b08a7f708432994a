"""See the data as the model will see it: rows after the chat template and tokenisation, token by
token, with what the loss counts, special tokens and EOS flagged, and warnings before any GPU
time is spent. Uses `masking.encode_rendered`, which labels tokens with the engine's
`loss_mask`: the highlighted tokens are exactly those training counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from datacontract import ner
from workers.dataprep import masking
from workers.engine.loss_mask import IGNORE_INDEX

MESSAGES = {
    masking.TRUNCATED: "rows longer than max_length are cut: the end of the answer is lost",
    masking.MISSING_EOS: "no EOS / end-of-turn token is trained: the model may not learn to stop",
    masking.EMPTY_ANSWER: "empty answers: the model learns to answer with nothing",
    masking.NO_ANSWER: "conversations without an assistant turn: nothing is trained",
    masking.TEMPLATE_MISSING: "the model has no chat template: a plain 'role: content' "
    "rendering is used, which the model never saw",
    masking.TEMPLATE_FAILED: "the model's chat template refuses some rows (a role or order it "
    "does not support): training stops on them; they are shown as plain text, nothing trained",
    masking.TEMPLATE_NOT_INCREMENTAL: "the chat template renders earlier turns differently in "
    "longer conversations, so the answers cannot be located: training refuses these rows "
    "(shown with nothing trained)",
}


UNKNOWN_TOKENS = "unknown_tokens"
# Above this share of unknown tokens the base cannot read the data (its script, usually).
UNKNOWN_WARN_RATE = 0.01


def coverage(tokenizer: Any, encoded: list[masking.Encoded]) -> tuple[int, int]:
    """(unknown tokens, tokens that are not special) over the encoded rows: how much of the
    text the tokenizer cannot represent. A byte-level BPE (GPT-2, SmolLM2, a scratch model's)
    has no unknown token and reads every script; a WordPiece one (MiniLM) turns what is not in
    its vocabulary, most Chinese characters for an English one, into [UNK]."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(tokenizer.all_special_ids) - ({unk} if unk is not None else set())
    unknown = total = 0
    for item in encoded:
        for token_id in item.input_ids:
            if token_id in special:
                continue
            total += 1
            unknown += unk is not None and token_id == unk
    return unknown, total


def _token_rows(tokenizer: Any, encoded: masking.Encoded) -> list[dict[str, Any]]:
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(tokenizer.all_special_ids) - ({unk} if unk is not None else set())
    stops = masking.stop_token_ids(tokenizer)
    tokens = []
    shown_upto = 0
    for token_id, label, (start, end) in zip(
        encoded.input_ids, encoded.labels, encoded.offsets, strict=True
    ):
        # Byte-level BPE can split one character (a Chinese one, say) over tokens whose
        # offsets overlap: each character is shown once, on the first token that reaches it.
        shown = encoded.text[max(start, shown_upto) : end]
        shown_upto = max(shown_upto, end)
        tokens.append(
            {
                "text": shown,
                "id": token_id,
                "loss": label != IGNORE_INDEX,
                "special": token_id in special,
                "eos": token_id in stops,
                "unknown": unk is not None and token_id == unk,
            }
        )
    return tokens


def entity_detail(row: dict[str, Any], encoded: masking.Encoded) -> dict[str, Any]:
    """An entity row as training reads it: the text cut into plain and entity pieces (for
    highlighting) and, per token, the tag it is trained on. A word's first sub-word carries
    its tag; later sub-words carry it (as I-) only with label_alignment "all" (`tag_all`)."""
    text = encoded.text
    entities = list(row.get("entities") or [])
    word_spans, tags = ner.word_tags(text, entities)
    words_of_tokens = ner.token_words(encoded.offsets, ner.char_owners(text, word_spans))
    seen: set[int] = set()
    token_tags: list[dict[str, str | None]] = []
    for word in words_of_tokens:
        if word is None:
            token_tags.append({"tag": None, "tag_all": None})
        elif word not in seen:
            seen.add(word)
            token_tags.append({"tag": tags[word], "tag_all": tags[word]})
        else:
            token_tags.append({"tag": None, "tag_all": ner.continuation(tags[word])})
    pieces: list[dict[str, Any]] = []
    at = 0
    for entity in sorted(entities, key=lambda e: e["start"]):
        start, end = int(entity["start"]), int(entity["end"])
        if start > at:
            pieces.append({"text": text[at:start]})
        pieces.append({"text": text[start:end], "label": entity["label"]})
        at = end
    if at < len(text):
        pieces.append({"text": text[at:]})
    return {"segments": pieces, "token_tags": token_tags}


def model_view(
    *,
    tokenizer: Any,
    rows: Iterable[dict[str, Any]],
    schema: str,
    max_length: int,
    chat_template: bool = True,
    detail_rows: int = 8,
    sample_rows: int = 1000,
) -> dict[str, Any]:
    """Token-level detail for the first `detail_rows`; counts and warnings over `sample_rows`."""
    sample = list(islice(rows, sample_rows))
    # One rendering per answer: a preference pair shows its chosen and its rejected answer.
    answers: list[tuple[int, str | None]] = []
    rendered: list[masking.Rendered] = []
    for index, row in enumerate(sample):
        if schema in ("preference", "kto"):
            for name, answer in masking.render_answers(tokenizer, row, schema):
                answers.append((index, name))
                rendered.append(answer)
        else:
            answers.append((index, None))
            rendered.append(masking.render_row(tokenizer, row, schema, chat_template=chat_template))
    encoded: list[masking.Encoded] = []
    for start in range(0, len(rendered), 256):
        encoded += masking.encode_rendered(
            tokenizer, rendered[start : start + 256], max_length=max_length
        )
    counts: dict[str, int] = {}
    for item in encoded:
        for code in set(item.warnings):
            counts[code] = counts.get(code, 0) + 1
    n = len(encoded)
    token_counts = [e.num_tokens for e in encoded]
    warnings = [
        {
            "code": code,
            "rows": count,
            "rate": round(count / n, 4) if n else 0.0,
            "message": MESSAGES.get(code, code),
        }
        for code, count in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    unknown, readable = coverage(tokenizer, encoded)
    unknown_rate = round(unknown / readable, 4) if readable else 0.0
    if unknown_rate > UNKNOWN_WARN_RATE:
        warnings.insert(
            0,
            {
                "code": UNKNOWN_TOKENS,
                "rows": sum(1 for e in encoded if coverage(tokenizer, [e])[0]),
                "rate": unknown_rate,
                "message": f"{unknown_rate:.0%} of the tokens are unknown to this tokenizer "
                f"({tokenizer.unk_token}): this base cannot read the data's script, and what it "
                "cannot read it cannot learn. Choose a base that reads the language (a scratch "
                "base's tokenizer is trained on your data)",
            },
        )
    template_wanted = chat_template and schema not in (
        "text",
        "classification",
        "token_classification",
    )
    if (
        template_wanted
        and not masking.has_chat_template(tokenizer)
        and not any(w["code"] == masking.TEMPLATE_MISSING for w in warnings)
    ):
        warnings.append(
            {
                "code": masking.TEMPLATE_MISSING,
                "rows": n,
                "rate": 1.0 if n else 0.0,
                "message": MESSAGES[masking.TEMPLATE_MISSING],
            }
        )
    return {
        "schema": schema,
        "max_length": max_length,
        "chat_template": chat_template and masking.has_chat_template(tokenizer),
        "eos_token": tokenizer.eos_token,
        "summary": {
            # Renderings: a preference pair counts its two answers ("answers_per_row").
            "sampled_rows": n,
            "answers_per_row": 2 if schema == "preference" else 1,
            "truncated_rows": counts.get(masking.TRUNCATED, 0),
            "truncated_rate": round(counts.get(masking.TRUNCATED, 0) / n, 4) if n else 0.0,
            "mean_tokens": round(sum(token_counts) / n, 1) if n else 0.0,
            "max_tokens": max(token_counts, default=0),
            "token_histogram": token_histogram(token_counts),
            "trained_tokens": sum(
                sum(1 for lab in e.labels if lab != IGNORE_INDEX) for e in encoded
            ),
            "unknown_tokens": unknown,
            "unknown_rate": unknown_rate,
        },
        "warnings": warnings,
        "rows": [
            {
                "index": answers[i][0],
                "answer": answers[i][1],
                "num_tokens": e.num_tokens,
                "shown_tokens": len(e.input_ids),
                "trained_tokens": sum(1 for lab in e.labels if lab != IGNORE_INDEX),
                "truncated": e.truncated,
                "warnings": sorted(set(e.warnings)),
                "tokens": _token_rows(tokenizer, e),
                **(entity_detail(sample[i], e) if schema == "token_classification" else {}),
            }
            for i, e in enumerate(encoded[: detail_rows * (2 if schema == "preference" else 1)])
        ],
    }


# Tokens-per-row buckets: powers of two, so short and long rows both read at a glance.
TOKEN_BINS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def token_histogram(counts: list[int]) -> list[dict[str, int | None]]:
    """Rows per bucket [min, max) of token count (the last bucket open), empty ends trimmed."""
    rows = [0] * len(TOKEN_BINS)
    for n in counts:
        rows[max(i for i, low in enumerate(TOKEN_BINS) if n >= low)] += 1
    buckets: list[dict[str, int | None]] = [
        {"min": low, "max": TOKEN_BINS[i + 1] if i + 1 < len(TOKEN_BINS) else None, "rows": c}
        for i, (low, c) in enumerate(zip(TOKEN_BINS, rows, strict=True))
    ]
    while buckets and buckets[-1]["rows"] == 0:
        buckets.pop()
    while buckets and buckets[0]["rows"] == 0:
        buckets.pop(0)
    return buckets
