"""The one JSON reader for what clients send: bounded nesting, no lone surrogates, bounded keys.

`json.loads` accepts things the rest of the product cannot handle: nesting deep enough to raise
RecursionError (in the parse, or later in any `json.dumps` of the value), and lone UTF-16
surrogates (`"\\ud800"`), which are not characters, so encoding the value as UTF-8 (a response,
a database write, a request to the inference server) raises UnicodeEncodeError. Every reader of
client JSON (dataset rows, form fields, request bodies) goes through `loads` here, so those
failures become one clear refusal at the door instead of a 500 somewhere later.

The checks cost almost nothing on ordinary input: each runs only when a C-speed count or search
over the raw text shows it could fail (more brackets than the depth limit, a `\\uD8..` escape,
more colons than the key limit).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
# Keys in one request body (all objects together); far above any form or API call we take.
MAX_BODY_KEYS = 10_000

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_ESCAPED_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
# UTF-8-style encodings of U+D800..U+DFFF (json.loads decodes bytes with "surrogatepass").
_RAW_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")

LONE_SURROGATE = (
    "contains a lone UTF-16 surrogate (an escape like \\ud800 without its pair), which is not "
    "a character; send text as UTF-8"
)


class JSONRefused(ValueError):
    """Well-formed JSON that is refused; the message says why, for a person."""


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, max_keys: int | None = None) -> Any:
    """`json.loads` with the checks above.

    Raises json.JSONDecodeError (or UnicodeDecodeError for bytes) for text that is not JSON,
    and JSONRefused for nesting deeper than `max_depth`, a lone surrogate, or more than
    `max_keys` object keys in all.
    """
    keys = 0

    def count_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal keys
        keys += len(pairs)
        return dict(pairs)

    colons = text.count(b":") if isinstance(text, bytes) else text.count(":")
    counting = max_keys is not None and colons > max_keys  # each key needs a colon
    try:
        value = json.loads(text, object_pairs_hook=count_keys if counting else None)
    except RecursionError:
        raise JSONRefused(f"is nested deeper than {max_depth} levels") from None
    if counting and max_keys is not None and keys > max_keys:
        raise JSONRefused(f"has {keys} object keys; at most {max_keys} are accepted")
    if _bracket_count(text) > max_depth and _too_deep(value, max_depth):
        raise JSONRefused(f"is nested deeper than {max_depth} levels")
    if _may_hold_surrogate(text) and has_lone_surrogate(value):
        raise JSONRefused(LONE_SURROGATE)
    return value


def refusal(
    body: bytes, *, max_depth: int = MAX_DEPTH, max_keys: int = MAX_BODY_KEYS
) -> str | None:
    """Why a request body is refused, or None (also for text that is not JSON at all: the
    route's own parser answers that with its usual message)."""
    try:
        loads(body, max_depth=max_depth, max_keys=max_keys)
    except JSONRefused as exc:
        return str(exc)
    except ValueError:  # not JSON (JSONDecodeError, UnicodeDecodeError): not ours to answer
        return None
    return None


def has_lone_surrogate(value: Any) -> bool:
    """Whether a parsed value holds a string (or key) that cannot be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bracket_count(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


def _may_hold_surrogate(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return bool(_ESCAPED_SURROGATE_BYTES.search(text) or _RAW_SURROGATE_BYTES.search(text))
    return bool(_ESCAPED_SURROGATE.search(text) or _RAW_SURROGATE.search(text))


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether lists/objects nest deeper than `max_depth` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
