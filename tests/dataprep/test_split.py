"""Train/validation/test assignment: reproducible with a seed, stratified by label."""

from __future__ import annotations

from collections import Counter

import pytest

from app.core.prep_recipe import SplitSettings
from workers.dataprep.split import SplitError, assign_splits


def labelled(n_pos: int, n_neg: int) -> list[dict[str, str]]:
    rows = [{"text": f"好 {i}", "label": "pos"} for i in range(n_pos)]
    rows += [{"text": f"bad {i}", "label": "neg"} for i in range(n_neg)]
    return rows


def test_random_split_is_reproducible_with_the_same_seed_and_differs_with_another() -> None:
    rows = [{"text": f"doc {i}"} for i in range(200)]
    settings = SplitSettings(validation=0.1, test=0.2, seed=7)
    first = [r["split"] for r in assign_splits(lambda: rows, "text", settings)]
    again = [r["split"] for r in assign_splits(lambda: rows, "text", settings)]
    other = [
        r["split"]
        for r in assign_splits(
            lambda: rows, "text", SplitSettings(validation=0.1, test=0.2, seed=8)
        )
    ]
    assert first == again
    assert first != other
    assert Counter(first) == {"train": 140, "validation": 20, "test": 40}


def test_classification_split_is_stratified_by_label() -> None:
    rows = labelled(90, 10)
    out = list(assign_splits(lambda: rows, "classification", SplitSettings(validation=0.2)))
    counts = Counter((r["label"], r["split"]) for r in out)
    assert counts == {
        ("pos", "train"): 72,
        ("pos", "validation"): 18,
        ("neg", "train"): 8,
        ("neg", "validation"): 2,
    }
    assert [r["text"] for r in out] == [r["text"] for r in rows]  # order kept


def test_split_by_column_takes_each_rows_value_and_names_a_bad_row() -> None:
    rows = [
        {"text": "a", "fold": "train"},
        {"text": "b", "fold": "dev"},
        {"text": "c", "fold": "TEST"},
    ]
    settings = SplitSettings(method="column", column="fold")
    assert [r["split"] for r in assign_splits(lambda: rows, "text", settings)] == [
        "train",
        "validation",
        "test",
    ]
    with pytest.raises(SplitError, match="row 2: column 'fold' is 'holdout'"):
        list(assign_splits(lambda: [rows[0], {"text": "x", "fold": "holdout"}], "text", settings))
