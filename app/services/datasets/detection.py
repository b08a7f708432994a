"""Schema detection: which canonical schema a file's records are, and which source column holds
each canonical key, from the first records' columns (docs/datasets-ingest.md).

A user's `schema` and `column_map` win; otherwise each schema's known column names
(`ALIASES`) are matched and the schema whose required keys are all found wins, then the one
that matches more columns, then the earlier in `DETECTION_ORDER`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datacontract as contract
from app.core.errors import ValidationFailed
from app.services.datasets.converters import kto_label

# Each schema's keys, and those a row may lack (filled with ""): docs/DATA_CONTRACT.md.
SCHEMAS = contract.KEYS
OPTIONAL_KEYS = contract.OPTIONAL_KEYS
# Source column names recognised for each canonical key, per schema; detection prefers the
# schema whose required keys are all found, then the one that matches more columns.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "chat": {"messages": ("messages", "conversations", "conversation", "dialog", "dialogue")},
    "instruction": {
        "instruction": ("instruction", "instructions"),
        "input": ("input", "context"),
        "output": ("output", "response", "answer"),
    },
    "classification": {
        "text": ("text", "sentence", "content", "review", "document", "comment"),
        "label": ("label", "labels", "category", "class", "sentiment"),
    },
    "seq2seq": {
        "source": ("source", "src", "article", "document", "source_text"),
        "target": ("target", "tgt", "summary", "highlights", "translation", "target_text"),
    },
    "prompt_completion": {
        "prompt": ("prompt", "question", "input", "query"),
        "completion": ("completion", "answer", "output", "response"),
    },
    "text": {"text": ("text", "content", "document", "body", "passage", "sentence", "story")},
    # TRL's {prompt, chosen, rejected}, OpenAI's DPO JSONL (input.messages, preferred_output,
    # non_preferred_output) and Anthropic HH (chosen/rejected conversations, no prompt).
    "preference": {
        "prompt": ("prompt", "input", "question", "instruction", "query"),
        "chosen": ("chosen", "preferred_output", "chosen_response", "preferred"),
        "rejected": ("rejected", "non_preferred_output", "rejected_response", "dispreferred"),
    },
    # KTO's unpaired rows: one answer and whether it is desirable.
    "kto": {
        "prompt": ("prompt", "input", "question", "query"),
        "completion": ("completion", "response", "output", "answer"),
        "label": ("label", "desirable", "kto_label"),
    },
    "token_classification": {
        "text": ("text", "sentence", "content", "document"),
        "entities": ("entities", "spans", "entity_spans"),
    },
}
# The other form of entity rows: one tag per token (BIO or BIOES), converted to text + spans.
TOKEN_ALIASES: dict[str, tuple[str, ...]] = {
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "labels", "ner", "bio"),
}
DETECTION_ORDER = (
    "preference",
    "kto",
    "chat",
    "instruction",
    "token_classification",
    "classification",
    "seq2seq",
    "prompt_completion",
    "text",
)


def _columns(records: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            for key in record:
                seen.setdefault(str(key), None)
    return list(seen)


def _match(schema: str, columns: list[str]) -> dict[str, str]:
    lower = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    used: set[str] = set()
    for key in SCHEMAS[schema]:
        for alias in ALIASES[schema][key]:
            column = lower.get(alias)
            if column is not None and column not in used:
                found[key] = column
                used.add(column)
                break
    return found


def detect_schema(
    records: list[Any], *, schema: str | None, column_map: Mapping[str, str]
) -> tuple[str, dict[str, str], bool]:
    """(schema, canonical key -> source column, confident?) for the first records.

    A user's `schema` and `column_map` win; keys they leave out are filled from the aliases.
    """
    columns = _columns(records)
    token_columns = _token_columns(columns, schema, column_map)
    if token_columns is not None:
        return "token_classification", token_columns, True
    span_labels = _span_label_column(records, columns, schema, column_map)
    if span_labels is not None:
        return "token_classification", span_labels, True
    for key, column in column_map.items():
        if columns and column not in columns:
            raise ValidationFailed(
                f"column_map: the file has no column {column!r} (mapped to {key!r}); "
                f"its columns are {', '.join(columns)}",
                param="column_map",
            )
    if schema:
        allowed = set(SCHEMAS[schema])
        if schema == "token_classification":
            allowed |= set(TOKEN_ALIASES)
        unknown = set(column_map) - allowed
        if unknown:
            raise ValidationFailed(
                f"column_map: {', '.join(sorted(unknown))} is not a key of the {schema} schema "
                f"({', '.join(SCHEMAS[schema])})",
                param="column_map",
            )
        mapping = {**_match(schema, columns), **column_map}
        missing = [
            k
            for k in SCHEMAS[schema]
            if k not in mapping and k not in OPTIONAL_KEYS.get(schema, set())
        ]
        if missing:
            raise ValidationFailed(
                f"the {schema} schema needs a column for {', '.join(missing)}: map it with "
                f"column_map (the file's columns are {', '.join(columns) or 'none'})",
                param="column_map",
            )
        return schema, mapping, True
    best: tuple[tuple[int, int, int], str, dict[str, str]] | None = None
    for rank, candidate in enumerate(DETECTION_ORDER):
        mapping = _match(candidate, columns)
        for key, column in column_map.items():
            if key in SCHEMAS[candidate]:
                mapping[key] = column
        required = [k for k in SCHEMAS[candidate] if k not in OPTIONAL_KEYS.get(candidate, set())]
        complete = all(k in mapping for k in required)
        if not mapping:
            continue
        score = (int(complete), len(mapping), -rank)
        if best is None or score > best[0]:
            best = (score, candidate, mapping)
    if best is not None and best[1] == "kto" and not _boolean_labels(records, best[2]):
        # prompt/completion rows with some other "label" column are not KTO data.
        best = None
        for rank, candidate in enumerate(DETECTION_ORDER):
            if candidate == "kto":
                continue
            mapping = _match(candidate, columns)
            required = [
                k for k in SCHEMAS[candidate] if k not in OPTIONAL_KEYS.get(candidate, set())
            ]
            if mapping:
                score = (int(all(k in mapping for k in required)), len(mapping), -rank)
                if best is None or score > best[0]:
                    best = (score, candidate, mapping)
    if best is not None:
        complete = bool(best[0][0])
        return best[1], best[2], complete and not _ambiguous(columns, best[2])
    if not columns:  # no objects among the first rows: each row will say so
        return "text", {"text": "text"}, False
    string_columns = [
        c
        for c in columns
        if any(isinstance(r, dict) and isinstance(r.get(c), str) for r in records)
    ]
    if len(string_columns) == 1:
        return "text", {"text": string_columns[0]}, False
    raise ValidationFailed(
        "could not detect the schema from the columns "
        f"{', '.join(columns) or '(none: the rows are not objects)'}: choose a schema and map "
        "the columns with column_map",
        param="schema",
    )


def _boolean_labels(records: list[Any], mapping: dict[str, str]) -> bool:
    """KTO's label says whether an answer is desirable: true/false (or 1/0). Most of the first
    rows must say so; the odd other value is then that row's problem, not another schema."""
    column = mapping.get("label")
    values = [r.get(column) for r in records if isinstance(r, dict) and column in r]
    valid = sum(kto_label(v) is not None for v in values)
    return valid > 0 and valid * 2 > len(values)


def _token_columns(
    columns: list[str], schema: str | None, column_map: Mapping[str, str]
) -> dict[str, str] | None:
    """{"tokens", "tags"} -> column when the rows are tokens with one tag each (mapped by
    hand or found by name), else None (text + spans rows go through the aliases)."""
    if schema not in (None, "token_classification"):
        return None
    lower = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    for key, aliases in TOKEN_ALIASES.items():
        if key in column_map:
            found[key] = column_map[key]
            continue
        for alias in aliases:
            if alias in lower:
                found[key] = lower[alias]
                break
    if len(found) < 2:
        if found and any(k in column_map for k in TOKEN_ALIASES):
            missing = next(k for k in TOKEN_ALIASES if k not in found)
            raise ValidationFailed(
                f"column_map: tokens + tags rows need a column for {missing}", param="column_map"
            )
        return None
    if "entities" in {c.lower() for c in columns} and not column_map:
        return None  # text + spans rows that also carry tokens: the spans are exact
    return found


def _span_label_column(
    records: list[Any], columns: list[str], schema: str | None, column_map: Mapping[str, str]
) -> dict[str, str] | None:
    """doccano's span export, `{"text", "label": [[start, end, "PER"], ...]}`: a text column
    and a label column whose values are lists (a classification label is one value)."""
    if schema is not None or column_map:
        return None
    lower = {c.lower(): c for c in columns}
    text, label = lower.get("text"), lower.get("label") or lower.get("labels")
    if text is None or label is None:
        return None
    values = [r.get(label) for r in records if isinstance(r, dict) and label in r]
    if not values or not all(isinstance(v, list) for v in values):
        return None
    if not any(v and isinstance(v[0], list | dict) for v in values):
        return None  # empty lists only, or lists of plain values: not spans
    return {"text": text, "entities": label}


def _ambiguous(columns: list[str], mapping: dict[str, str]) -> bool:
    """Unsure when other text-like columns are left unmapped (the user should confirm)."""
    return len(columns) - len(mapping) > 2
