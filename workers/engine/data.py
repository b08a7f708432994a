"""Dataset files to fixed-length causal-LM blocks: reading, eval split, rendering, chunking."""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

Message = dict[str, str]
# A document: plain text, or a chat conversation (rendered through the chat template later).
Row = str | list[Message]

CHAT_ROLES = frozenset({"system", "user", "assistant"})
IGNORE_INDEX = -100  # labels the loss skips (padding of the last block)
_ENCODE_BATCH = 1000  # documents per call into the Rust tokenizer: fast, and bounded memory


class DatasetError(ValueError):
    """A dataset file the engine cannot read; the message names the file and line."""


def read_rows(path: Path, data_format: str) -> list[Row]:
    """All documents of one dataset file, streamed line by line."""
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if data_format == "txt":
        rows: list[Row] = list(_read_txt(path))
    elif data_format in ("text", "chat"):
        rows = list(_read_jsonl(path, data_format))
    else:
        raise DatasetError(f"unknown dataset format {data_format!r}")
    if not rows:
        raise DatasetError(f"{path.name} holds no documents")
    return rows


def _read_txt(path: Path) -> Iterator[str]:
    """Paragraphs (separated by blank lines) are the documents of a plain text file."""
    paragraph: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                paragraph.append(line.rstrip("\n"))
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _read_jsonl(path: Path, data_format: str) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path.name} line {line_no}: not valid JSON ({exc.msg})"
                ) from None
            where = f"{path.name} line {line_no}"
            if data_format == "text":
                yield _text_row(record, where)
            else:
                yield _chat_row(record, where)


def _text_row(record: object, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DatasetError(f'{where}: expected an object with a string "text"')
    return record["text"]


def _chat_row(record: object, where: str) -> list[Message]:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f'{where}: expected an object with a non-empty "messages" list')
    row: list[Message] = []
    for message in messages:
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: each message must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise DatasetError(f"{where}: unsupported role {role!r} (use system, user, assistant)")
        if not isinstance(content, str):
            raise DatasetError(f'{where}: a {role} message needs a string "content"')
        # Other keys (name, weight, ...) have no place in the template, so they are dropped.
        row.append({"role": role, "content": content})
    return row


def split_rows(rows: Sequence[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out a seeded random share of the documents for evaluation.

    Returns no eval rows when there are too few documents to spare one; the caller then
    splits blocks instead (a single long .txt paragraph is one document).
    """
    held_out = round(len(rows) * fraction)
    if fraction <= 0 or held_out < 1 or held_out >= len(rows):
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    eval_ids = set(order[:held_out])
    train = [row for i, row in enumerate(rows) if i not in eval_ids]
    evaluation = [row for i, row in enumerate(rows) if i in eval_ids]
    return train, evaluation


def tokenizer_corpus(rows: Iterable[Row]) -> Iterator[str]:
    """The raw texts a tokenizer learns from: chat contents without template markup."""
    for row in rows:
        if isinstance(row, str):
            yield row
        else:
            for message in row:
                yield message["content"]


def render_rows(rows: Iterable[Row], tokenizer: PreTrainedTokenizerFast) -> Iterator[str]:
    """Documents as the model will read them: chats through the tokenizer's chat template,
    so training sees exactly the format inference produces."""
    for row in rows:
        if isinstance(row, str):
            yield row
        else:
            yield tokenizer.apply_chat_template(row, tokenize=False)


class BlockDataset(Dataset):
    """Fixed-length blocks for causal LM training; labels are the inputs (the model shifts).

    Only the last block can be short: it is padded, masked and its padding ignored by the loss.
    """

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = self.input_ids[index]
        attention_mask = self.attention_mask[index]
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def split(self, fraction: float, seed: int) -> tuple[BlockDataset, BlockDataset | None]:
        """Hold out a seeded random share of the blocks (for corpora of too few documents)."""
        held_out = round(len(self) * fraction)
        if held_out < 1 or held_out >= len(self):
            return self, None
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        eval_ids, train_ids = order[:held_out].sort().values, order[held_out:].sort().values
        train = BlockDataset(self.input_ids[train_ids], self.attention_mask[train_ids])
        evaluation = BlockDataset(self.input_ids[eval_ids], self.attention_mask[eval_ids])
        return train, evaluation


def build_blocks(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerFast, block_size: int
) -> BlockDataset:
    """Tokenize, join documents with EOS between them and cut into block_size blocks."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token")
    # array("l") holds token ids compactly while the corpus streams through the tokenizer.
    ids = array("l")
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _ENCODE_BATCH:
            _append_encoded(ids, batch, tokenizer, eos_id)
            batch = []
    if batch:
        _append_encoded(ids, batch, tokenizer, eos_id)

    full_blocks, tail = divmod(len(ids), block_size)
    # A tail of one token has nothing to predict; anything longer is worth a padded block.
    rows = full_blocks + (1 if tail > 1 else 0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    input_ids = torch.full((rows, block_size), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, block_size), dtype=torch.long)
    flat = torch.tensor(ids, dtype=torch.long)
    used = full_blocks * block_size
    input_ids[:full_blocks] = flat[:used].view(full_blocks, block_size)
    attention_mask[:full_blocks] = 1
    if rows > full_blocks:
        input_ids[full_blocks, :tail] = flat[used:]
        attention_mask[full_blocks, :tail] = 1
    return BlockDataset(input_ids, attention_mask)


def _append_encoded(
    ids: array, batch: list[str], tokenizer: PreTrainedTokenizerFast, eos_id: int
) -> None:
    # The backend directly: no max-length warnings for long documents, which are chunked anyway.
    for encoding in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos_id)
