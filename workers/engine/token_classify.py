"""Token classification (NER): entity rows to sub-word labels, the Trainer's metric hook, and
the decoding of a model's output back to character spans.

Labels are BIO tags over words (datacontract.ner): whatever scheme the data came in, a model
predicts O, B-X and I-X. A word's label goes to its first sub-word; the other sub-words get
either nothing (-100, "first") or the word's label as a continuation, I-X ("all"). Evaluation
always reads each word's first sub-word, so eval loss and scores are per word whatever the
alignment, and seqeval scores the word tag sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import EvalPrediction, PreTrainedTokenizerBase

from datacontract import ner
from workers.engine.data import EntityText
from workers.engine.loss_mask import IGNORE_INDEX
from workers.engine.metrics import scalar_metrics, token_classification_report

ALIGNMENTS = ("first", "all")


def tag_names(*row_sets: Sequence[EntityText]) -> list[str]:
    """O, then B-/I- of every entity type seen, sorted: the same ids on every (re)run."""
    return ner.tag_set(label for rows in row_sets for row in rows for _, _, label in row.entities)


@dataclass(frozen=True)
class Aligned:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where nothing is trained
    word_tokens: list[int | None]  # per word: the position of its first sub-word, if any


def align(
    tokenizer: PreTrainedTokenizerBase,
    row: EntityText,
    tag_index: dict[str, int],
    max_length: int,
    alignment: str,
) -> Aligned:
    """The row's sub-word ids and labels (see the module docstring)."""
    word_spans, tags = ner.word_tags(row.text, row.entity_dicts())
    encoded = tokenizer(
        row.text, truncation=True, max_length=max_length, return_offsets_mapping=True
    )
    words_of_tokens = ner.token_words(
        encoded["offset_mapping"], ner.char_owners(row.text, word_spans)
    )
    labels: list[int] = []
    first: list[int | None] = [None] * len(word_spans)
    for position, word in enumerate(words_of_tokens):
        if word is None:
            labels.append(IGNORE_INDEX)
        elif first[word] is None:
            first[word] = position
            labels.append(tag_index[tags[word]])
        elif alignment == "all":
            labels.append(tag_index[ner.continuation(tags[word])])
        else:
            labels.append(IGNORE_INDEX)
    return Aligned(list(encoded["input_ids"]), labels, first)


class EntityDataset(Dataset[dict[str, Any]]):
    def __init__(
        self,
        rows: Sequence[EntityText],
        tokenizer: PreTrainedTokenizerBase,
        tags: list[str],
        max_length: int,
        alignment: str,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "token classification needs a fast tokenizer (character offsets of sub-words); "
                "this base model's tokenizer is a slow one"
            )
        index = {tag: i for i, tag in enumerate(tags)}
        pad = tokenizer.pad_token_id or 0
        aligned = (align(tokenizer, row, index, max_length, alignment) for row in rows)
        # A tokenizer without special tokens gives an empty text no token: one pad, no label.
        self.items = [
            item if item.input_ids else Aligned([pad], [IGNORE_INDEX], item.word_tokens)
            for item in aligned
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}

    @property
    def num_tokens(self) -> int:
        return sum(len(item.input_ids) for item in self.items)


@dataclass(frozen=True)
class TokenCollator:
    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(feature["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def labelled_sequences(
    predicted: np.ndarray, label_ids: np.ndarray, tags: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag sequences per example, read at the labelled positions."""
    y_true: list[list[str]] = []
    y_pred: list[list[str]] = []
    for pred_row, gold_row in zip(predicted, label_ids, strict=True):
        keep = gold_row != IGNORE_INDEX
        y_true.append([tags[int(i)] for i in gold_row[keep]])
        y_pred.append([tags[int(i)] for i in pred_row[keep]])
    return y_true, y_pred


@dataclass
class TokenEvaluator:
    """The Trainer's compute_metrics: seqeval's entity scores and token accuracy for the
    charts, the full report (per type, confusion) kept aside for the run page."""

    tags: list[str]
    latest: dict[str, Any] = field(default_factory=dict)

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = np.asarray(logits).argmax(axis=-1)
        y_true, y_pred = labelled_sequences(predicted, np.asarray(prediction.label_ids), self.tags)
        self.latest = token_classification_report(y_true, y_pred)
        return scalar_metrics(self.latest)


def predict_entities(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
) -> list[list[dict[str, Any]]]:
    """Entities (label, score, start, end: character offsets into each text) a model finds.

    Each word is read at its first sub-word (offset mappings of a fast tokenizer); a word
    whose characters share a sub-word with the word before it continues that word's entity.
    Used by the inference server and by evaluations of registered versions.
    """
    tags = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    offsets = encoded.pop("offset_mapping").tolist()
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits.float()
    probs = torch.softmax(logits, dim=-1).cpu()
    best_p, best = probs.max(dim=-1)
    mask = encoded["attention_mask"].tolist()
    out = []
    for row, text in enumerate(texts):
        row_offsets = [
            (int(o[0]), int(o[1])) if mask[row][i] else (0, 0) for i, o in enumerate(offsets[row])
        ]
        out.append(
            ner.entities_from_tokens(
                text,
                row_offsets,
                [tags[int(i)] for i in best[row].tolist()],
                best_p[row].tolist(),
            )
        )
    return out
