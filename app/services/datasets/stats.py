"""Statistics of a dataset, gathered row by row in the ingest pass (memory bounded by caps):
lengths and their histogram, duplicates, scripts, labels, entity types, chat roles, and for
preference pairs the answer lengths."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Any

_CHAR_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
_SCRIPTS: list[tuple[int, int, str]] = [
    (0x0041, 0x024F, "Latin"),
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x04FF, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x3040, 0x30FF, "Kana"),
    (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"),
    (0xAC00, 0xD7AF, "Hangul"),
    (0xF900, 0xFAFF, "Han"),
]
_MAX_LABELS = 1000
_MAX_DUP_HASHES = 2_000_000


_ASCII_LETTER = re.compile(r"[A-Za-z]")


def script_of(text: str, sample: int = 128) -> str:
    """The dominant script of a text's first letters: a cheap language-mix signal that needs
    no word splitting (Chinese and Japanese have no spaces)."""
    head = text[:sample]
    if head.isascii():  # the common case, without a loop in Python
        return "Latin" if _ASCII_LETTER.search(head) else "None"
    counts: Counter[str] = Counter()
    for char in head:
        code = ord(char)
        if code < 0x41 or not char.isalpha():
            continue
        for low, high, name in _SCRIPTS:
            if low <= code <= high:
                counts[name] += 1
                break
        else:
            counts["Other"] += 1
    if not counts:
        return "None"
    top = counts.most_common(1)[0][0]
    # Japanese text mixes Han with Kana; any Kana makes it Japanese rather than Chinese.
    if top == "Han" and counts.get("Kana"):
        return "Kana"
    return top


def row_text(row: dict[str, Any]) -> str:
    """All the text of a canonical row, for counting and searching."""
    parts: list[str] = []
    for key, value in row.items():
        if key in ("label", "split", "entities"):
            continue
        if isinstance(value, list):  # messages (chat, preference and KTO rows)
            parts += [str(m.get("content") or "") for m in value if isinstance(m, dict)]
        else:
            parts.append(str(value))
    return "\n".join(parts)


class StatsCollector:
    """Statistics gathered row by row in the ingest pass (memory bounded by the caps)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.rows = 0
        self.chars = 0
        self.min_chars: int | None = None
        self.max_chars = 0
        self.hist = [0] * len(_CHAR_BINS)
        self.labels: Counter[str] = Counter()
        self.labels_other = 0
        # token_classification: entities per type, the rows holding each, their characters.
        self.entity_types: Counter[str] = Counter()
        self.entity_rows: Counter[str] = Counter()
        self.entity_chars: Counter[str] = Counter()
        self.rows_without_entities = 0
        self.roles: Counter[str] = Counter()
        self.turns: Counter[int] = Counter()
        self.scripts: Counter[str] = Counter()
        self.splits: Counter[str] = Counter()
        self.hashes: set[int] = set()
        self.duplicates = 0
        self.dup_checked = 0
        # Preference pairs: answer lengths (a DPO model learns "longer is better" when the
        # chosen answers are longer: a known bias worth seeing before training).
        self.chosen_chars = 0
        self.rejected_chars = 0
        self.chosen_longer = 0
        self.rejected_longer = 0

    def _add_preference(self, row: dict[str, Any]) -> None:
        chosen = sum(len(m["content"]) for m in row["chosen"])
        rejected = sum(len(m["content"]) for m in row["rejected"])
        self.chosen_chars += chosen
        self.rejected_chars += rejected
        self.chosen_longer += chosen > rejected
        self.rejected_longer += rejected > chosen

    def add(self, row: dict[str, Any], line: bytes) -> None:
        text = row_text(row)
        n = len(text)
        self.rows += 1
        self.chars += n
        self.min_chars = n if self.min_chars is None else min(self.min_chars, n)
        self.max_chars = max(self.max_chars, n)
        bin_index = 0
        while bin_index + 1 < len(_CHAR_BINS) and n >= _CHAR_BINS[bin_index + 1]:
            bin_index += 1
        self.hist[bin_index] += 1
        self.scripts[script_of(text)] += 1
        if "label" in row:
            label = row["label"]
            if label in self.labels or len(self.labels) < _MAX_LABELS:
                self.labels[label] += 1
            else:
                self.labels_other += 1
        if "entities" in row:
            found = {e["label"] for e in row["entities"]}
            if len(self.entity_types) < _MAX_LABELS or found <= set(self.entity_types):
                for entity in row["entities"]:
                    self.entity_types[entity["label"]] += 1
                    self.entity_chars[entity["label"]] += entity["end"] - entity["start"]
                self.entity_rows.update(found)
            if not found:
                self.rows_without_entities += 1
        if "messages" in row:
            for message in row["messages"]:
                self.roles[message["role"]] += 1
            self.turns[len(row["messages"])] += 1
        if "split" in row:
            self.splits[row["split"]] += 1
        if self.schema == "preference":
            self._add_preference(row)
        if len(self.hashes) < _MAX_DUP_HASHES:
            key = int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")
            if key in self.hashes:
                self.duplicates += 1
            else:
                self.hashes.add(key)
            self.dup_checked += 1

    def summary(self) -> dict[str, Any]:
        histogram = [
            {"min": low, "max": _CHAR_BINS[i + 1] if i + 1 < len(_CHAR_BINS) else None, "rows": c}
            for i, (low, c) in enumerate(zip(_CHAR_BINS, self.hist, strict=True))
        ]
        while histogram and histogram[-1]["rows"] == 0:
            histogram.pop()
        while histogram and histogram[0]["rows"] == 0:
            histogram.pop(0)
        out: dict[str, Any] = {
            "rows": self.rows,
            "characters": {
                "total": self.chars,
                "min": self.min_chars or 0,
                "max": self.max_chars,
                "mean": round(self.chars / self.rows, 1) if self.rows else 0,
                "histogram": histogram,
            },
            "duplicates": {
                "rows": self.duplicates,
                "rate": round(self.duplicates / self.dup_checked, 4) if self.dup_checked else 0,
                "checked_rows": self.dup_checked,
            },
            "scripts": dict(self.scripts.most_common()),
        }
        if self.schema == "classification":
            out["labels"] = dict(self.labels.most_common())
            if self.labels_other:
                out["labels_other"] = self.labels_other
        if self.schema == "token_classification":
            out["entity_types"] = {
                label: {
                    "entities": count,
                    "rows": self.entity_rows[label],
                    "mean_chars": round(self.entity_chars[label] / count, 1),
                }
                for label, count in self.entity_types.most_common()
            }
            out["entities"] = {
                "total": sum(self.entity_types.values()),
                "rows_without": self.rows_without_entities,
            }
        if self.schema == "chat":
            out["roles"] = dict(self.roles.most_common())
            out["messages_per_row"] = {str(k): v for k, v in sorted(self.turns.items())}
        if self.schema == "preference" and self.rows:
            out["preference"] = {
                "chosen_mean_chars": round(self.chosen_chars / self.rows, 1),
                "rejected_mean_chars": round(self.rejected_chars / self.rows, 1),
                "chosen_longer_rate": round(self.chosen_longer / self.rows, 4),
                "rejected_longer_rate": round(self.rejected_longer / self.rows, 4),
            }
        if self.schema == "kto":
            out["labels"] = {
                "desirable": self.labels.get(True, 0),  # type: ignore[call-overload]
                "undesirable": self.labels.get(False, 0),  # type: ignore[call-overload]
            }
        if self.splits:
            out["splits"] = dict(self.splits)
        return out
