"""Sequence classification: labelled texts to padded batches, and the Trainer's metric hook."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import EvalPrediction, PreTrainedTokenizerBase

from workers.engine.data import LabeledText
from workers.engine.metrics import classification_report, scalar_metrics


def label_names(*row_sets: Sequence[LabeledText]) -> list[str]:
    """Every label seen, sorted: the class ids are then the same on every (re)run."""
    return sorted({row.label for rows in row_sets for row in rows})


class LabeledDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(
        self,
        rows: Sequence[LabeledText],
        tokenizer: PreTrainedTokenizerBase,
        labels: list[str],
        max_length: int,
    ) -> None:
        index = {label: i for i, label in enumerate(labels)}
        encoded = tokenizer([row.text for row in rows], truncation=True, max_length=max_length)[
            "input_ids"
        ]
        # An empty text still needs one token to classify from.
        pad = tokenizer.pad_token_id or 0
        self.items = [
            (ids or [pad], index[row.label]) for ids, row in zip(encoded, rows, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, label = self.items[i]
        return {"input_ids": ids, "labels": label}

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.items)


@dataclass(frozen=True)
class ClassificationCollator:
    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            mask[row, :n] = 1
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class ClassificationEvaluator:
    """The Trainer's compute_metrics: scalars for the charts, the full report kept aside
    (per class, confusion matrix) for the run page."""

    labels: list[str]
    latest: dict[str, Any] = field(default_factory=dict)

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        y_pred = np.asarray(logits).argmax(axis=-1).tolist()
        y_true = np.asarray(prediction.label_ids).tolist()
        self.latest = classification_report(y_true, y_pred, self.labels)
        return scalar_metrics(self.latest)
