"""Supervised fine-tuning examples: a conversation through the chat template, loss on the answers.

Which tokens a conversation trains on is decided in `loss_mask` (shared with the registry's
perplexity and the dataset model view); this module batches, pads and drops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from workers.engine.loss_mask import IGNORE_INDEX, Message, encode, render_conversation

_ENCODE_BATCH = 1000  # conversations per call into the Rust tokenizer


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


class ExampleDataset(Dataset[dict[str, list[int]]]):
    """Variable-length examples, padded per batch by `PadCollator` (no packing: a conversation
    keeps its own attention span, and masking stays exact)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


@dataclass(frozen=True)
class PadCollator:
    """Right-pads input_ids with pad_id, labels with IGNORE_INDEX; builds the attention mask."""

    pad_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_sft_dataset(
    conversations: Sequence[Sequence[Message]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> ExampleDataset:
    """Masked examples (`loss_mask`); a conversation whose answers were all truncated away is
    dropped. A chat template that cannot locate the answers raises `loss_mask.TemplateError`."""
    examples = []
    rendered = [render_conversation(messages, tokenizer) for messages in conversations]
    for start in range(0, len(rendered), _ENCODE_BATCH):
        batch = rendered[start : start + _ENCODE_BATCH]
        for item in encode(tokenizer, batch, max_length=max_length):
            if any(label != IGNORE_INDEX for label in item.labels[1:]):
                examples.append(Example(item.input_ids, item.labels))
    return ExampleDataset(examples)
