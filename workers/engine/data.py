"""Dataset files to fixed-length causal-LM blocks: reading, eval split, rendering, chunking."""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

import datacontract as contract
from datacontract import ner
from workers.engine.loss_mask import IGNORE_INDEX, Message, instruction_prompt, pair_conversation
from workers.engine.paragraphs import read_paragraphs


@dataclass(frozen=True)
class LabeledText:
    """A `classification` row."""

    text: str
    label: str


@dataclass(frozen=True)
class EntityText:
    """A `token_classification` row: a text and its entities as character spans (checked at
    upload: in range, sorted, not overlapping; datacontract.ner)."""

    text: str
    entities: tuple[tuple[int, int, str], ...]

    def entity_dicts(self) -> list[dict[str, Any]]:
        return [{"start": s, "end": e, "label": label} for s, e, label in self.entities]


@dataclass(frozen=True)
class Pair:
    """A `seq2seq` row: the source to read and the target to produce."""

    source: str
    target: str


@dataclass(frozen=True)
class Preference:
    """A `preference` row: the shared turns, then a better and a worse answer (assistant turns)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


@dataclass(frozen=True)
class Unpaired:
    """A `kto` row: one answer to the prompt and whether it is desirable."""

    prompt: list[Message]
    completion: list[Message]
    label: bool


# A document: plain text, a chat conversation (rendered through the chat template later;
# prompt_completion and instruction rows become conversations), a labelled text or a pair.
Row = str | list[Message] | LabeledText | Pair | EntityText | Preference | Unpaired

CHAT_ROLES = frozenset(contract.CHAT_ROLES)
# The canonical schemas of docs/DATA_CONTRACT.md (the engine also reads the old "txt", a plain
# text file) and the splits a prepared dataset version marks its rows with.
SCHEMAS = contract.SCHEMAS
SPLITS = contract.SPLITS
_ENCODE_BATCH = 1000  # documents per call into the Rust tokenizer: fast, and bounded memory


class DatasetError(ValueError):
    """A dataset file the engine cannot read; the message names the file and line."""


def read_rows(path: Path, data_format: str, *, prefer_split: str | None = None) -> list[Row]:
    """All documents of one dataset file, streamed line by line.

    With `prefer_split` (say "test"), only the rows of that split when the file has any
    (a prepared version tags each row with its `split`), else all rows.
    """
    marked = read_split_rows(path, data_format)
    if prefer_split is not None and any(split == prefer_split for split, _ in marked):
        marked = [(split, row) for split, row in marked if split == prefer_split]
    return [row for _, row in marked]


def read_split_rows(path: Path, data_format: str) -> list[tuple[str | None, Row]]:
    """Each document with the split a prepared version assigned it ("train", "validation",
    "test"; None for a row without one: an upload, a plain text file)."""
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if data_format == "txt":
        rows: list[tuple[str | None, Row]] = [(None, p) for p in read_paragraphs(path)]
    elif data_format in SCHEMAS:
        rows = list(_read_jsonl(path, data_format))
    else:
        raise DatasetError(f"unknown dataset format {data_format!r}")
    if not rows:
        raise DatasetError(f"{path.name} holds no documents")
    return rows


def _read_jsonl(path: Path, data_format: str) -> Iterator[tuple[str | None, Row]]:
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
            split = record.get("split") if isinstance(record, dict) else None
            if split is not None and split not in SPLITS:
                raise DatasetError(
                    f"{where}: split must be one of {', '.join(SPLITS)} (got {split!r})"
                )
            yield split, _ROW_READERS[data_format](record, where)


def _strings(record: object, where: str, keys: tuple[str, ...]) -> list[str]:
    """The string values of `keys`, or an error naming what the schema expects."""
    if isinstance(record, dict) and all(isinstance(record.get(k), str) for k in keys):
        return [record[k] for k in keys]
    expected = ", ".join(f'"{k}"' for k in keys)
    noun = "a string" if len(keys) == 1 else "strings"
    raise DatasetError(f"{where}: expected an object with {noun} {expected}")


def _text_row(record: object, where: str) -> str:
    return _strings(record, where, ("text",))[0]


def _prompt_completion_row(record: object, where: str) -> list[Message]:
    prompt, completion = _strings(record, where, ("prompt", "completion"))
    return pair_conversation(prompt, completion)


def _instruction_row(record: object, where: str) -> list[Message]:
    instruction, given, output = _strings(record, where, ("instruction", "input", "output"))
    return pair_conversation(instruction_prompt(instruction, given), output)


def _classification_row(record: object, where: str) -> LabeledText:
    text, label = _strings(record, where, ("text", "label"))
    if not label.strip():
        raise DatasetError(f"{where}: the label is empty")
    return LabeledText(text, label)


def _token_row(record: object, where: str) -> EntityText:
    text = _strings(record, where, ("text",))[0]
    assert isinstance(record, dict)
    try:
        entities = ner.check_entities(text, record.get("entities"))
    except ner.TagError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    return EntityText(
        text, tuple((int(e["start"]), int(e["end"]), str(e["label"])) for e in entities)
    )


def _seq2seq_row(record: object, where: str) -> Pair:
    source, target = _strings(record, where, ("source", "target"))
    return Pair(source, target)


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
            raise DatasetError(
                f"{where}: unsupported role {role!r} (use system, user, assistant or tool)"
            )
        if not isinstance(content, str):
            raise DatasetError(f'{where}: a {role} message needs a string "content"')
        # Other keys (name, weight, ...) have no place in the template, so they are dropped.
        row.append({"role": role, "content": content})
    return row


def _messages(record: dict[str, Any], key: str, where: str) -> list[Message]:
    messages = record.get(key)
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f'{where}: expected a non-empty "{key}" list of messages')
    out: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise DatasetError(f'{where}: each "{key}" message needs a known role')
        if not isinstance(message.get("content"), str):
            raise DatasetError(f'{where}: each "{key}" message needs a string "content"')
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _preference_row(record: object, where: str) -> Preference:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with prompt, chosen and rejected")
    return Preference(
        _messages(record, "prompt", where),
        _messages(record, "chosen", where),
        _messages(record, "rejected", where),
    )


def _kto_row(record: object, where: str) -> Unpaired:
    if not isinstance(record, dict) or not isinstance(record.get("label"), bool):
        raise DatasetError(
            f"{where}: expected an object with prompt, completion and a true/false label"
        )
    return Unpaired(
        _messages(record, "prompt", where),
        _messages(record, "completion", where),
        record["label"],
    )


_ROW_READERS: dict[str, Callable[[Any, str], Row]] = {
    "text": _text_row,
    "chat": _chat_row,
    "prompt_completion": _prompt_completion_row,
    "instruction": _instruction_row,
    "classification": _classification_row,
    "seq2seq": _seq2seq_row,
    "preference": _preference_row,
    "kto": _kto_row,
    "token_classification": _token_row,
}


def rows_by_split(
    marked: Sequence[tuple[str | None, Row]], fraction: float, seed: int
) -> tuple[list[Row], list[Row]]:
    """Training and evaluation documents of one file.

    A prepared version's own split is honoured: train on "train", evaluate on "validation",
    and never touch "test" (kept for evaluations of the finished model). Without split marks
    (an upload) a seeded share is held out (`split_rows`); so is it when the version has no
    validation rows.
    """
    if all(split is None for split, _ in marked):
        return split_rows([row for _, row in marked], fraction, seed)
    train = [row for split, row in marked if split in (None, "train")]
    evaluation = [row for split, row in marked if split == "validation"]
    if not evaluation:
        return split_rows(train, fraction, seed)
    return train, evaluation


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
        elif isinstance(row, LabeledText | EntityText):
            yield row.text
        elif isinstance(row, Pair):
            yield row.source
            yield row.target
        elif isinstance(row, Preference):
            for message in (*row.prompt, *row.chosen, *row.rejected):
                yield message["content"]
        elif isinstance(row, Unpaired):
            for message in (*row.prompt, *row.completion):
                yield message["content"]
        else:
            for message in row:
                yield message["content"]


def render_rows(rows: Iterable[Row], tokenizer: PreTrainedTokenizerFast) -> Iterator[str]:
    """Documents as the model will read them: chats through the tokenizer's chat template,
    so training sees exactly the format inference produces."""
    for row in rows:
        if isinstance(row, str):
            yield row
        elif isinstance(row, LabeledText | EntityText):
            yield row.text
        elif isinstance(row, Pair):
            yield f"{row.source}\n{row.target}"
        elif isinstance(row, Preference):
            yield str(tokenizer.apply_chat_template([*row.prompt, *row.chosen], tokenize=False))
        elif isinstance(row, Unpaired):
            yield str(tokenizer.apply_chat_template([*row.prompt, *row.completion], tokenize=False))
        else:
            yield str(tokenizer.apply_chat_template(row, tokenize=False))


class BlockDataset(Dataset[dict[str, torch.Tensor]]):
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
    ids: array[int], batch: list[str], tokenizer: PreTrainedTokenizerFast, eos_id: int
) -> None:
    # The backend directly: no max-length warnings for long documents, which are chunked anyway.
    for encoding in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos_id)
