"""Which fields of a canonical row are text a cleaning step may touch (never a label or role)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datacontract as contract

Row = dict[str, Any]

# Flat string fields per schema; `chat`, `preference` and `kto` rows carry their text in every
# message's "content" (MESSAGE_KEYS).
_TEXT_KEYS = contract.TEXT_KEYS
_MESSAGE_KEYS = contract.MESSAGE_KEYS


def text_keys(schema: str) -> tuple[str, ...]:
    try:
        return _TEXT_KEYS[schema]
    except KeyError:
        raise ValueError(f"unknown schema {schema!r}") from None


def texts(row: Row, schema: str) -> list[str]:
    """The row's text fields in a fixed order."""
    if schema in _MESSAGE_KEYS:
        return [
            m.get("content") or ""
            for key in _MESSAGE_KEYS[schema]
            for m in row.get(key, ())
            if isinstance(m, dict)
        ]
    if schema == "token_classification":
        # Read by filters and duplicate checks; never changed (entities are offsets into it).
        return [row.get("text") or ""]
    return [row.get(key) or "" for key in text_keys(schema)]


def joined_text(row: Row, schema: str) -> str:
    """All text of a row as one string, for length, language and duplicate checks."""
    return "\n".join(texts(row, schema))


def map_texts(row: Row, schema: str, fn: Callable[[str], str]) -> Row:
    """A copy of the row with `fn` applied to every text field; other keys kept as they are."""
    out = dict(row)
    if schema in _MESSAGE_KEYS:
        for key in _MESSAGE_KEYS[schema]:
            out[key] = [
                {**m, "content": fn(m["content"])} if isinstance(m.get("content"), str) else m
                for m in row.get(key, ())
            ]
        return out
    for key in text_keys(schema):
        value = row.get(key)
        if isinstance(value, str):
            out[key] = fn(value)
    return out
