"""Train/validation/test assignment: seeded and reproducible, stratified by label if asked.

Two passes over a re-readable source (the canonical file): the first counts rows per group
(label, or one group), the second assigns. Per group a seeded permutation picks exactly
round(n * share) rows for test and validation, so shares hold within every label. State is one
byte per row.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from app.core.prep_recipe import SplitSettings

Row = dict[str, Any]
_CODES = ("train", "validation", "test")
# Spellings a split column commonly uses, folded to the canonical names.
_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    "testing": "test",
}


class SplitError(ValueError):
    """A row the split cannot place (a column value that names no split); says which row."""


def _group(row: Row, schema: str, settings: SplitSettings) -> str:
    if settings.stratify and schema == "classification":
        return str(row.get("label", ""))
    return ""


def assign_splits(
    rows: Callable[[], Iterable[Row]], schema: str, settings: SplitSettings
) -> Iterator[Row]:
    """Rows with their "split" key set. `rows` is called once per pass (twice for random)."""
    if settings.method == "column":
        yield from _by_column(rows(), settings.column or "split")
        return
    counts: dict[str, int] = {}
    for row in rows():
        group = _group(row, schema, settings)
        counts[group] = counts.get(group, 0) + 1
    plans: dict[str, np.ndarray] = {}
    for group, n in counts.items():
        # Seed from the recipe's seed and the group's name: stable across runs and processes.
        rng = np.random.default_rng([settings.seed, zlib.crc32(group.encode("utf-8"))])
        order = rng.permutation(n)
        codes = np.zeros(n, dtype=np.uint8)
        n_test = round(n * settings.test)
        n_val = round(n * settings.validation)
        if n_test + n_val >= n:  # never leave a group without a training row
            n_test, n_val = min(n_test, max(n - 1, 0)), max(min(n_val, n - 1 - n_test), 0)
        codes[order[:n_test]] = 2
        codes[order[n_test : n_test + n_val]] = 1
        plans[group] = codes
    seen = dict.fromkeys(counts, 0)
    for row in rows():
        group = _group(row, schema, settings)
        index = seen[group]
        seen[group] = index + 1
        yield {**row, "split": _CODES[int(plans[group][index])]}


def _by_column(rows: Iterable[Row], column: str) -> Iterator[Row]:
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        split = _ALIASES.get(str(value).strip().lower()) if value is not None else None
        if split is None:
            raise SplitError(
                f"row {number}: column {column!r} is {value!r}, not train, validation or test"
            )
        yield {**row, "split": split}
