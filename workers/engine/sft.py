"""Supervised fine-tuning examples: a conversation through the chat template, loss on the answers.

`mask_conversation` is the one place that decides which tokens a conversation trains on: the
tokens of each assistant turn (its content and the template's end-of-turn markup, so the model
learns to stop), and nothing of the system, user or tool turns nor of the template around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from workers.engine.data import IGNORE_INDEX, Message


class TemplateError(ValueError):
    """The chat template renders a conversation's prefix differently from the whole of it."""


def assistant_spans(
    messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character ranges of its assistant turns.

    Each assistant turn i spans from the end of the prompt rendered for it (messages before i
    plus the generation prompt) to the end of the rendering of messages up to i. Every chat
    template the engine meets renders a conversation as the concatenation of its turns, so
    these prefixes are prefixes of the full text; a template that does not is refused.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = (
            tokenizer.apply_chat_template(
                list(messages[:i]), tokenize=False, add_generation_prompt=True
            )
            if i
            else ""
        )
        upto = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise TemplateError(
                "the chat template does not render a conversation turn by turn; "
                "the answer tokens cannot be located for loss masking"
            )
        spans.append((len(prompt), len(upto)))
    return text, spans


def mask_conversation(
    messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[int], list[int]]:
    """input_ids and labels of one conversation: labels are IGNORE_INDEX outside the answers.

    A token is an answer token when its first character lies inside an assistant span.
    Truncated to max_length tokens (the end of a long conversation is dropped).
    """
    text, spans = assistant_spans(messages, tokenizer)
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False
    )
    input_ids: list[int] = list(encoded["input_ids"])[:max_length]
    labels: list[int] = []
    for token_id, (start, _end) in zip(input_ids, encoded["offset_mapping"], strict=False):
        inside = any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return input_ids, labels


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


class ExampleDataset(Dataset):
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
    """Masked examples; a conversation whose answers were all truncated away is dropped."""
    examples = []
    for messages in conversations:
        input_ids, labels = mask_conversation(messages, tokenizer, max_length)
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append(Example(input_ids, labels))
    return ExampleDataset(examples)
