"""Streaming ingest of uploaded files into canonical JSONL (see DATA_CONTRACT.md).

One pass over the file, bounded memory whatever its size: a reader per format yields source
records with their line/row number, the schema is detected from the first records (or given by
the user with a column map), each record is converted to a canonical row or rejected with a
short reason, and valid rows are written out while statistics are gathered. Nothing here
touches the database: the caller decides what to store.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import datacontract as contract
from app.core import safe_json
from app.core.errors import PayloadTooLarge, ValidationFailed
from datacontract import ner

# Each schema's keys, and those a row may lack (filled with ""): docs/DATA_CONTRACT.md.
SCHEMAS = contract.KEYS
OPTIONAL_KEYS = contract.OPTIONAL_KEYS
# Source column names recognised for each canonical key, per schema; detection prefers the
# schema whose required keys are all found, then the one that matches more columns.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "chat": {"messages": ("messages", "conversations", "conversation", "dialog", "dialogue")},
    "instruction": {
        "instruction": ("instruction", "instructions"),
        "input": ("input", "context"),
        "output": ("output", "response", "answer"),
    },
    "classification": {
        "text": ("text", "sentence", "content", "review", "document", "comment"),
        "label": ("label", "labels", "category", "class", "sentiment"),
    },
    "seq2seq": {
        "source": ("source", "src", "article", "document", "source_text"),
        "target": ("target", "tgt", "summary", "highlights", "translation", "target_text"),
    },
    "prompt_completion": {
        "prompt": ("prompt", "question", "input", "query"),
        "completion": ("completion", "answer", "output", "response"),
    },
    "text": {"text": ("text", "content", "document", "body", "passage", "sentence", "story")},
    # TRL's {prompt, chosen, rejected}, OpenAI's DPO JSONL (input.messages, preferred_output,
    # non_preferred_output) and Anthropic HH (chosen/rejected conversations, no prompt).
    "preference": {
        "prompt": ("prompt", "input", "question", "instruction", "query"),
        "chosen": ("chosen", "preferred_output", "chosen_response", "preferred"),
        "rejected": ("rejected", "non_preferred_output", "rejected_response", "dispreferred"),
    },
    # KTO's unpaired rows: one answer and whether it is desirable.
    "kto": {
        "prompt": ("prompt", "input", "question", "query"),
        "completion": ("completion", "response", "output", "answer"),
        "label": ("label", "desirable", "kto_label"),
    },
    "token_classification": {
        "text": ("text", "sentence", "content", "document"),
        "entities": ("entities", "spans", "entity_spans"),
    },
}
# The other form of entity rows: one tag per token (BIO or BIOES), converted to text + spans.
TOKEN_ALIASES: dict[str, tuple[str, ...]] = {
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "labels", "ner", "bio"),
}
DETECTION_ORDER = (
    "preference",
    "kto",
    "chat",
    "instruction",
    "token_classification",
    "classification",
    "seq2seq",
    "prompt_completion",
    "text",
)
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "txt", "conll")
_EXTENSIONS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "json",
    "parquet": "parquet",
    "pq": "parquet",
    "txt": "txt",
    "text": "txt",
    "md": "txt",
    "conll": "conll",
}
TEXT_SPLITS = ("blocks", "lines", "file")
ON_ERROR = ("reject", "keep_valid")
CHAT_ROLES = contract.CHAT_ROLES
_ROLE_ALIASES = {"developer": "system", "human": "user", "gpt": "assistant", "bot": "assistant"}
DETECT_ROWS = 200
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Limits:
    max_line_bytes: int
    max_rows: int
    max_decompressed_bytes: int
    max_document_bytes: int


@dataclass
class IngestOptions:
    schema: str | None = None
    column_map: dict[str, str] = field(default_factory=dict)
    on_error: str = "reject"
    text_split: str = "blocks"


@dataclass
class Problem:
    location: str  # "line 3" or "row 3 (line 7)"
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class IngestResult:
    source_format: str
    compressed: bool
    schema: str
    detection: dict[str, Any]
    num_rows: int
    sha256: str  # of the canonical file
    size_bytes: int
    stats: dict[str, Any]
    problems_count: int
    problems: list[Problem]


# --- formats ------------------------------------------------------------------------------
def source_format(filename: str) -> tuple[str, bool]:
    """(format, gzip-compressed?) from the file name: `data.csv.gz` is ("csv", True)."""
    lower = filename.lower()
    compressed = lower.endswith(".gz")
    if compressed:
        lower = lower[:-3]
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    if ext not in _EXTENSIONS:
        raise ValidationFailed(
            f"unsupported file type {filename!r}: upload .csv, .tsv, .jsonl, .json, .parquet, "
            ".txt or .conll, optionally gzip-compressed (.gz)",
            param="file",
        )
    return _EXTENSIONS[ext], compressed


class _CappedReader(io.RawIOBase):
    """Counts decompressed bytes and stops at the limit (a gzip bomb answers 413)."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise PayloadTooLarge(
                f"the decompressed file is larger than the dataset size limit of "
                f"{self.limit // (1024 * 1024)} MB (max_dataset_bytes)"
            )
        buffer[: len(data)] = data
        return len(data)


def _open_binary(path: Path, limits: Limits) -> io.BufferedReader:
    handle = path.open("rb")
    if handle.peek(2)[:2] == _GZIP_MAGIC:
        inner = gzip.GzipFile(fileobj=handle, mode="rb")
        return io.BufferedReader(_CappedReader(inner, limits.max_decompressed_bytes), 1 << 16)
    return handle


def _raw_lines(binary: IO[bytes], limits: Limits) -> Iterator[tuple[int, bytes]]:
    line_no = 0
    while True:
        try:
            raw = binary.readline(limits.max_line_bytes + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ValidationFailed(
                f"line {line_no + 1}: the gzip data is corrupt ({exc})"
            ) from None
        if not raw:
            return
        line_no += 1
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if len(raw) > limits.max_line_bytes and not raw.endswith(b"\n"):
            raise ValidationFailed(
                f"line {line_no}: longer than the line length limit of "
                f"{limits.max_line_bytes} bytes (max_line_bytes)"
            )
        yield line_no, raw


def _decode(raw: bytes, location: str) -> str | Problem:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(
            location,
            f"encoding error: not valid UTF-8 (byte {exc.start + 1} of the line)",
            raw.decode("utf-8", "replace")[:500],
        )


Item = tuple[str, Any]  # (location, record) where record may be a Problem


def _read_jsonl(binary: IO[bytes], limits: Limits) -> Iterator[Item]:
    for line_no, raw in _raw_lines(binary, limits):
        location = f"line {line_no}"
        text = _decode(raw, location)
        if isinstance(text, Problem):
            yield location, text
            continue
        if not text.strip():
            continue  # blank lines between rows are harmless
        try:
            yield location, safe_json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                location,
                Problem(location, f"invalid JSON ({exc.msg} at column {exc.colno})", text[:500]),
            )
        except safe_json.JSONRefused as exc:
            yield location, Problem(location, f"the row {exc}", text[:500])


def _read_delimited(binary: IO[bytes], limits: Limits, delimiter: str) -> Iterator[Item]:
    state = {"line": 0}
    pending: list[Problem] = []

    def lines() -> Iterator[str]:
        for line_no, raw in _raw_lines(binary, limits):
            state["line"] = line_no
            text = _decode(raw, f"line {line_no}")
            if isinstance(text, Problem):
                pending.append(text)
                continue
            yield text

    csv.field_size_limit(max(limits.max_line_bytes, 131072))
    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    while True:
        start = state["line"] + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValidationFailed(
                f"line {state['line']}: malformed {delimiter!r} data ({exc})"
            ) from None
        for problem in pending:
            yield problem.location, problem
        pending.clear()
        if not fields or all(not f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
            if any(not name for name in header) or len(set(header)) != len(header):
                raise ValidationFailed(
                    f"line {start}: the header row needs a unique, non-empty name per column"
                )
            continue
        location = f"line {start}"
        if len(fields) != len(header):
            yield (
                location,
                Problem(
                    location,
                    f"expected {len(header)} fields like the header, found {len(fields)}",
                    delimiter.join(fields)[:500],
                ),
            )
            continue
        yield location, dict(zip(header, fields, strict=True))
    for problem in pending:
        yield problem.location, problem
    if header is None:
        raise ValidationFailed("the file is empty: it has no header row and no rows")


_JSON_SPECIAL = re.compile(r'[\[\]{}",\\\n]')


def _read_json_array(binary: IO[bytes], limits: Limits) -> Iterator[Item]:
    """Split a top-level JSON array into elements without parsing the whole file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    depth = 0
    in_string = False
    skip_at = -1  # index in the current chunk of a character escaped by a backslash
    line = 1
    element_start_line = 1
    parts: list[str] = []
    size = 0
    index = 0
    started = False
    ended = False
    first = True
    while True:
        try:
            chunk_bytes = binary.read(1 << 16)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ValidationFailed(f"line {line}: the gzip data is corrupt ({exc})") from None
        try:
            chunk = decoder.decode(chunk_bytes, final=not chunk_bytes)
        except UnicodeDecodeError:
            raise ValidationFailed(f"line {line}: encoding error: not valid UTF-8") from None
        if first and chunk.startswith("\ufeff"):
            chunk = chunk[1:]
        first = False
        if not chunk_bytes:
            break
        pos = 0  # start of the part of `chunk` not yet copied into `parts`
        for match in _JSON_SPECIAL.finditer(chunk):
            char = match.group()
            at = match.start()
            if at == skip_at:
                continue
            if char == "\n":
                line += 1
                continue
            if in_string:
                if char == "\\":
                    skip_at = at + 1
                elif char == '"':
                    in_string = False
                continue
            if not started:
                if char != "[" or chunk[:at].strip():
                    raise ValidationFailed(
                        "a .json upload must be one JSON array of rows, or JSON lines"
                    )
                started = True
                depth = 1
                pos = at + 1
                element_start_line = line
                continue
            if ended:
                raise ValidationFailed(f"line {line}: unexpected data after the JSON array")
            if char == '"':
                in_string = True
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            if (depth == 1 and char == ",") or depth == 0:
                parts.append(chunk[pos:at])
                text = "".join(parts)
                parts, size = [], 0
                pos = at + 1
                if text.strip() or char == ",":
                    index += 1
                    lead = text[: len(text) - len(text.lstrip())]
                    location = f"row {index} (line {element_start_line + lead.count(chr(10))})"
                    try:
                        yield location, safe_json.loads(text)
                    except json.JSONDecodeError as exc:
                        yield location, Problem(location, f"invalid JSON ({exc.msg})", text[:500])
                    except safe_json.JSONRefused as exc:
                        yield location, Problem(location, f"the row {exc}", text[:500])
                element_start_line = line
                if depth == 0:
                    ended = True
        # An escape at the chunk's very end escapes the next chunk's first character.
        skip_at = 0 if skip_at == len(chunk) else -1
        if started and not ended:
            parts.append(chunk[pos:])
            size += len(chunk) - pos
            if size > limits.max_line_bytes:
                raise ValidationFailed(
                    f"row {index + 1}: longer than the row size limit of "
                    f"{limits.max_line_bytes} bytes (max_line_bytes)"
                )
        elif not started and chunk.strip():
            raise ValidationFailed("a .json upload must be one JSON array of rows, or JSON lines")
    if not started:
        raise ValidationFailed("the file is empty: it has no rows")
    if not ended:
        raise ValidationFailed(f"line {line}: the JSON array is not closed (missing ']')")


def _read_text(binary: IO[bytes], limits: Limits, split: str) -> Iterator[Item]:
    block: list[str] = []
    block_line = 0
    size = 0

    def flush() -> Iterator[Item]:
        nonlocal block, size
        text = "".join(block).strip("\r\n")
        where = f"line {block_line}" if split != "file" else "file"
        block, size = [], 0
        if text.strip():
            yield where, {"text": text}

    for line_no, raw in _raw_lines(binary, limits):
        text = _decode(raw, f"line {line_no}")
        if isinstance(text, Problem):
            yield text.location, text
            continue
        if split == "lines":
            if text.strip():
                yield f"line {line_no}", {"text": text.rstrip("\r\n")}
            continue
        if split == "blocks" and not text.strip():
            yield from flush()
            continue
        if not block:
            block_line = line_no
        block.append(text)
        size += len(raw)
        if size > limits.max_document_bytes:
            raise ValidationFailed(
                f"line {line_no}: the document is longer than the limit of "
                f"{limits.max_document_bytes} bytes (max_document_bytes)"
            )
    yield from flush()


CONLL_DOCSTART = "-DOCSTART-"
CONLL_DETECT_LINES = 200
CONLL_SAMPLE_BYTES = 1 << 16
CONLL_LINES = "_conll_lines"  # a CoNLL sentence's line numbers, so a bad tag names its line


def looks_like_conll(sample: bytes) -> bool:
    """The detection rule for a .txt upload: its first 200 non-blank lines (document markers
    aside) each have at least two whitespace-separated fields, the last a tag (O, or B-/I-/
    E-/S- and a type), and at least one tag is not O. Prose almost never ends every line so."""
    head = sample.decode("utf-8", "replace").lstrip("\ufeff")
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.startswith(CONLL_DOCSTART)]
    if len(sample) >= CONLL_SAMPLE_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut in the middle
    lines = lines[:CONLL_DETECT_LINES]
    if not lines:
        return False
    tags = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or not ner.TAG_PATTERN.match(fields[-1]):
            return False
        tags.append(fields[-1])
    return any(tag != ner.OUTSIDE for tag in tags)


def _read_conll(binary: IO[bytes], limits: Limits) -> Iterator[Item]:
    """CoNLL sentences: a token and its tag per line (first and last of the whitespace-
    separated fields, so CoNLL-2003's POS and chunk columns are skipped), a blank line between
    sentences, `-DOCSTART-` lines ignored. A sentence is one record; a malformed line makes
    its sentence a problem naming that line."""
    tokens: list[str] = []
    tags: list[str] = []
    numbers: list[int] = []
    start = 0
    problem: Problem | None = None
    size = 0

    def flush() -> Iterator[Item]:
        nonlocal tokens, tags, numbers, problem, size
        location = f"line {start}"
        if problem is not None:
            yield location, problem
        elif tokens:
            yield location, {"tokens": tokens, "tags": tags, CONLL_LINES: numbers}
        tokens, tags, numbers, problem, size = [], [], [], None, 0

    for line_no, raw in _raw_lines(binary, limits):
        text = _decode(raw, f"line {line_no}")
        if isinstance(text, Problem):
            yield text.location, text
            continue
        stripped = text.strip()
        if not stripped:
            yield from flush()
            continue
        if stripped.startswith(CONLL_DOCSTART):
            continue
        if not tokens and problem is None:
            start = line_no
        size += len(raw)
        if size > limits.max_document_bytes:
            raise ValidationFailed(
                f"line {line_no}: the sentence is longer than the limit of "
                f"{limits.max_document_bytes} bytes (max_document_bytes)"
            )
        fields = stripped.split()
        if problem is not None:
            continue
        if len(fields) < 2:
            problem = Problem(
                f"line {line_no}",
                "expected a token and its tag separated by whitespace",
                stripped[:500],
            )
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
        numbers.append(line_no)
    yield from flush()


def _read_parquet(path: Path, limits: Limits) -> Iterator[Item]:
    import pyarrow as pa  # imported here: only Parquet uploads pay for it
    import pyarrow.parquet as pq

    tmp: Path | None = None
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    if compressed:  # Parquet needs random access: decompress to a file next to it first
        tmp = path.with_name(path.name + ".parquet")
        with _open_binary(path, limits) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    try:
        try:
            parquet = pq.ParquetFile(tmp or path)
        except (pa.ArrowException, OSError) as exc:
            raise ValidationFailed(f"not a readable Parquet file ({exc})", param="file") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield f"row {row}", record
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def read_records(
    path: Path, fmt: str, limits: Limits, text_split: str = "blocks"
) -> tuple[Iterator[Item], list[str] | None]:
    """The file's records and, for formats with a header, its column names."""
    if fmt == "parquet":
        return _read_parquet(path, limits), None
    binary = _open_binary(path, limits)
    if fmt == "json":
        head = binary.peek(64).lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
        if head != b"[":
            fmt = "jsonl"  # a .json file of JSON lines is accepted as such
    readers: dict[str, Callable[[], Iterator[Item]]] = {
        "jsonl": lambda: _read_jsonl(binary, limits),
        "json": lambda: _read_json_array(binary, limits),
        "csv": lambda: _read_delimited(binary, limits, ","),
        "tsv": lambda: _read_delimited(binary, limits, "\t"),
        "txt": lambda: _read_text(binary, limits, text_split),
        "conll": lambda: _read_conll(binary, limits),
    }

    def closing() -> Iterator[Item]:
        try:
            yield from readers[fmt]()
        finally:
            binary.close()

    return closing(), None


# --- schema detection and conversion --------------------------------------------------------
def _columns(records: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            for key in record:
                seen.setdefault(str(key), None)
    return list(seen)


def _match(schema: str, columns: list[str]) -> dict[str, str]:
    lower = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    used: set[str] = set()
    for key in SCHEMAS[schema]:
        for alias in ALIASES[schema][key]:
            column = lower.get(alias)
            if column is not None and column not in used:
                found[key] = column
                used.add(column)
                break
    return found


def detect_schema(records: list[Any], options: IngestOptions) -> tuple[str, dict[str, str], bool]:
    """(schema, canonical key -> source column, confident?) for the first records.

    A user's `schema` and `column_map` win; keys they leave out are filled from the aliases.
    """
    columns = _columns(records)
    token_columns = _token_columns(columns, options)
    if token_columns is not None:
        return "token_classification", token_columns, True
    span_labels = _span_label_column(records, columns, options)
    if span_labels is not None:
        return "token_classification", span_labels, True
    for key, column in options.column_map.items():
        if columns and column not in columns:
            raise ValidationFailed(
                f"column_map: the file has no column {column!r} (mapped to {key!r}); "
                f"its columns are {', '.join(columns)}",
                param="column_map",
            )
    if options.schema:
        schema = options.schema
        allowed = set(SCHEMAS[schema])
        if schema == "token_classification":
            allowed |= set(TOKEN_ALIASES)
        unknown = set(options.column_map) - allowed
        if unknown:
            raise ValidationFailed(
                f"column_map: {', '.join(sorted(unknown))} is not a key of the {schema} schema "
                f"({', '.join(SCHEMAS[schema])})",
                param="column_map",
            )
        mapping = {**_match(schema, columns), **options.column_map}
        missing = [
            k
            for k in SCHEMAS[schema]
            if k not in mapping and k not in OPTIONAL_KEYS.get(schema, set())
        ]
        if missing:
            raise ValidationFailed(
                f"the {schema} schema needs a column for {', '.join(missing)}: map it with "
                f"column_map (the file's columns are {', '.join(columns) or 'none'})",
                param="column_map",
            )
        return schema, mapping, True
    best: tuple[tuple[int, int, int], str, dict[str, str]] | None = None
    for rank, schema in enumerate(DETECTION_ORDER):
        mapping = _match(schema, columns)
        for key, column in options.column_map.items():
            if key in SCHEMAS[schema]:
                mapping[key] = column
        required = [k for k in SCHEMAS[schema] if k not in OPTIONAL_KEYS.get(schema, set())]
        complete = all(k in mapping for k in required)
        if not mapping:
            continue
        score = (int(complete), len(mapping), -rank)
        if best is None or score > best[0]:
            best = (score, schema, mapping)
    if best is not None and best[1] == "kto" and not _boolean_labels(records, best[2]):
        # prompt/completion rows with some other "label" column are not KTO data.
        best = None
        for rank, schema in enumerate(DETECTION_ORDER):
            if schema == "kto":
                continue
            mapping = _match(schema, columns)
            required = [k for k in SCHEMAS[schema] if k not in OPTIONAL_KEYS.get(schema, set())]
            if mapping:
                score = (int(all(k in mapping for k in required)), len(mapping), -rank)
                if best is None or score > best[0]:
                    best = (score, schema, mapping)
    if best is not None:
        complete = bool(best[0][0])
        return best[1], best[2], complete and not _ambiguous(columns, best[2])
    if not columns:  # no objects among the first rows: each row will say so
        return "text", {"text": "text"}, False
    string_columns = [
        c
        for c in columns
        if any(isinstance(r, dict) and isinstance(r.get(c), str) for r in records)
    ]
    if len(string_columns) == 1:
        return "text", {"text": string_columns[0]}, False
    raise ValidationFailed(
        "could not detect the schema from the columns "
        f"{', '.join(columns) or '(none: the rows are not objects)'}: choose a schema and map "
        "the columns with column_map",
        param="schema",
    )


def _boolean_labels(records: list[Any], mapping: dict[str, str]) -> bool:
    """KTO's label says whether an answer is desirable: true/false (or 1/0). Most of the first
    rows must say so; the odd other value is then that row's problem, not another schema."""
    column = mapping.get("label")
    values = [r.get(column) for r in records if isinstance(r, dict) and column in r]
    valid = sum(_kto_label_or_none(v) is not None for v in values)
    return valid > 0 and valid * 2 > len(values)


def _kto_label_or_none(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.strip().lower()]
    return None


_BOOLEAN_WORDS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "desirable": True,
    "undesirable": False,
}


def _token_columns(columns: list[str], options: IngestOptions) -> dict[str, str] | None:
    """{"tokens", "tags"} -> column when the rows are tokens with one tag each (mapped by
    hand or found by name), else None (text + spans rows go through the aliases)."""
    if options.schema not in (None, "token_classification"):
        return None
    lower = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    for key, aliases in TOKEN_ALIASES.items():
        if key in options.column_map:
            found[key] = options.column_map[key]
            continue
        for alias in aliases:
            if alias in lower:
                found[key] = lower[alias]
                break
    if len(found) < 2:
        if found and any(k in options.column_map for k in TOKEN_ALIASES):
            missing = next(k for k in TOKEN_ALIASES if k not in found)
            raise ValidationFailed(
                f"column_map: tokens + tags rows need a column for {missing}", param="column_map"
            )
        return None
    if "entities" in {c.lower() for c in columns} and not options.column_map:
        return None  # text + spans rows that also carry tokens: the spans are exact
    return found


def _span_label_column(
    records: list[Any], columns: list[str], options: IngestOptions
) -> dict[str, str] | None:
    """doccano's span export, `{"text", "label": [[start, end, "PER"], ...]}`: a text column
    and a label column whose values are lists (a classification label is one value)."""
    if options.schema is not None or options.column_map:
        return None
    lower = {c.lower(): c for c in columns}
    text, label = lower.get("text"), lower.get("label") or lower.get("labels")
    if text is None or label is None:
        return None
    values = [r.get(label) for r in records if isinstance(r, dict) and label in r]
    if not values or not all(isinstance(v, list) for v in values):
        return None
    if not any(v and isinstance(v[0], list | dict) for v in values):
        return None  # empty lists only, or lists of plain values: not spans
    return {"text": text, "entities": label}


def _ambiguous(columns: list[str], mapping: dict[str, str]) -> bool:
    """Unsure when other text-like columns are left unmapped (the user should confirm)."""
    return len(columns) - len(mapping) > 2


class _RowError(Exception):
    pass


def _text(value: Any, key: str, column: str, *, allow_empty: bool = False) -> str:
    where = f'"{key}"' if key == column else f'"{key}" (column "{column}")'
    if value is None:
        raise _RowError(f"missing field: {where}")
    if not isinstance(value, str):
        raise _RowError(f"{where} must be a string")
    text = value
    if not allow_empty and not text.strip():
        raise _RowError(f"{where} is empty")
    return text


def _label(value: Any, column: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowError(f'label missing (column "{column}")')
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return str(value)
    raise _RowError(f'the label (column "{column}") must be one value, not a list or object')


def _entity_row(
    record: dict[str, Any], mapping: dict[str, str], column: Callable[[str], str]
) -> dict[str, Any]:
    """A `token_classification` row from tokens + tags (BIO/BIOES, checked strictly) or from
    text + character spans (in range, not overlapping)."""
    try:
        if "tokens" in mapping:
            tokens, tags = record.get(mapping["tokens"]), record.get(mapping["tags"])
            for key, value in (("tokens", tokens), ("tags", tags)):
                if not isinstance(value, list) or not value:
                    raise _RowError(f'"{column(key)}" must be a non-empty list of strings')
            assert isinstance(tags, list) and isinstance(tokens, list)
            if any(not isinstance(tag, str) for tag in tags):
                raise _RowError(
                    f'"{column("tags")}" must hold tag strings such as B-PER, I-PER, O '
                    "(integer tag ids need their names)"
                )
            return ner.from_tokens(tokens, tags)
        text = _text(record.get(mapping["text"]), "text", column("text"))
        raw = record.get(mapping["entities"]) if "entities" in mapping else None
        if raw is None:
            raise _RowError(f'missing field: "entities" (column "{column("entities")}")')
        if isinstance(raw, str):  # CSV/TSV cells hold the list as JSON
            try:
                raw = safe_json.loads(raw)
            except (json.JSONDecodeError, safe_json.JSONRefused):
                raise _RowError('"entities" is not a JSON list') from None
        return {"text": text, "entities": ner.check_entities(text, raw)}
    except ner.TagError as exc:
        lines = record.get(CONLL_LINES)
        if isinstance(lines, list) and exc.index is not None and exc.index < len(lines):
            raise _RowError(f"{exc} (line {lines[exc.index]})") from None
        raise _RowError(str(exc)) from None


def check_messages(value: Any) -> list[dict[str, Any]]:
    """The chat rules (docs/datasets-ingest.md): known roles, system messages first, the first
    other message not from the assistant, tool messages only after an assistant turn, at least
    one user and one assistant message, string contents (an assistant message may carry
    tool_calls instead). Extra keys are kept; role aliases (developer, human, gpt) normalised."""
    if isinstance(value, str):
        try:
            value = safe_json.loads(value)
        except json.JSONDecodeError as exc:
            raise _RowError(f'invalid JSON in "messages" ({exc.msg})') from None
        except safe_json.JSONRefused as exc:
            raise _RowError(f'"messages" {exc}') from None
    if not isinstance(value, list) or not value:
        raise _RowError('"messages" must be a non-empty list')
    out: list[dict[str, Any]] = []
    seen_other = False
    previous = ""
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise _RowError(f"message {index} must be an object")
        message = dict(message)
        if "role" not in message and "from" in message:  # ShareGPT style
            message["role"] = message.pop("from")
            message.setdefault("content", message.pop("value", None))
        role = message.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in CHAT_ROLES:
            raise _RowError(
                f"message {index} has role {role!r}; expected one of " + ", ".join(CHAT_ROLES)
            )
        message["role"] = role
        content = message.get("content")
        if role == "assistant" and content is None and message.get("tool_calls"):
            message["content"] = ""
        elif not isinstance(content, str):
            raise _RowError(f'message {index} needs a string "content"')
        elif not content.strip() and role in ("user", "assistant"):
            raise _RowError(f"message {index} ({role}) has empty text")
        if role == "system" and seen_other:
            raise _RowError(
                f"wrong role order: message {index} is a system message after the dialogue started"
            )
        if role != "system" and not seen_other:
            if role == "assistant" and index == 1:
                raise _RowError("wrong role order: the first message is from the assistant")
            if role == "tool":
                raise _RowError(
                    f"wrong role order: message {index} (tool) answers no assistant call"
                )
            seen_other = True
        if role == "tool" and previous not in ("assistant", "tool"):
            raise _RowError(
                f"wrong role order: message {index} (tool) must follow an assistant message"
            )
        previous = role
        out.append(message)
    roles = {m["role"] for m in out}
    if "assistant" not in roles:
        raise _RowError("a chat example needs at least one assistant message")
    if "user" not in roles:
        raise _RowError("a chat example needs at least one user message")
    return out


_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_messages(text: str) -> list[dict[str, Any]] | None:
    """Anthropic HH's "\n\nHuman: …\n\nAssistant: …" transcript as messages (None: not one)."""
    parts = _HH_MARKER.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _message_list(value: Any, name: str, default_role: str) -> list[dict[str, Any]]:
    """A preference field as {"role", "content"} messages: a list of messages, OpenAI's
    {"messages": [...]} input, a JSON string of either (CSV cells), an HH transcript, or plain
    text (one `default_role` turn)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            with contextlib.suppress(json.JSONDecodeError, safe_json.JSONRefused):
                value = safe_json.loads(stripped)
    if isinstance(value, str):
        hh = _hh_messages(value)
        if hh is not None:
            value = hh
        elif not value.strip():
            raise _RowError(f'"{name}" is empty')
        else:
            return [{"role": default_role, "content": value}]
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]  # OpenAI's DPO input: {"messages": [...], "tools": ...}
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list) or not value:
        raise _RowError(f'"{name}" must be text or a non-empty list of messages')
    out: list[dict[str, Any]] = []
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise _RowError(f'"{name}" message {index} must be an object')
        role = message.get("role", message.get("from"))
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        content = message.get("content", message.get("value"))
        if role not in CHAT_ROLES:
            raise _RowError(
                f'"{name}" message {index} has role {role!r}; expected one of '
                + ", ".join(CHAT_ROLES)
            )
        if not isinstance(content, str):
            raise _RowError(f'"{name}" message {index} needs a string "content"')
        if not content.strip() and role in ("user", "assistant"):
            raise _RowError(f'"{name}" message {index} ({role}) has empty text')
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[dict[str, Any]]) -> None:
    if not any(m["role"] == "user" for m in prompt):
        raise _RowError("the prompt needs a user message")
    if prompt[-1]["role"] == "assistant":
        raise _RowError(
            "the prompt ends with an assistant turn: the answer to judge must follow it"
        )
    seen_other = False
    for index, message in enumerate(prompt, start=1):
        if message["role"] == "system" and seen_other:
            raise _RowError(
                f"wrong role order: prompt message {index} is a system message after the "
                "dialogue started"
            )
        seen_other = seen_other or message["role"] != "system"


def _check_answer(answer: list[dict[str, Any]], name: str) -> None:
    if any(m["role"] != "assistant" for m in answer):
        raise _RowError(f'"{name}" must hold assistant turns only (the answer to the prompt)')


def _split_conversations(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, chosen answer, rejected answer) of two whole conversations (HH style): the
    prompt is the turns they share, up to the last one that is not the assistant's."""
    shared = 0
    while (
        shared < min(len(chosen), len(rejected))
        and chosen[shared]["role"] == rejected[shared]["role"]
        and chosen[shared]["content"] == rejected[shared]["content"]
    ):
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if shared == 0:
        raise _RowError(
            "without a prompt column, chosen and rejected must be whole conversations that "
            "start with the same user turn(s)"
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _preference_row(prompt_raw: Any, chosen_raw: Any, rejected_raw: Any) -> dict[str, Any]:
    if chosen_raw is None or rejected_raw is None:
        missing = "chosen" if chosen_raw is None else "rejected"
        raise _RowError(f'missing field: "{missing}"')
    chosen = _message_list(chosen_raw, "chosen", "assistant")
    rejected = _message_list(rejected_raw, "rejected", "assistant")
    if prompt_raw is None or (isinstance(prompt_raw, str) and not prompt_raw.strip()):
        if prompt_raw is not None and not (len(chosen) > 1 or len(rejected) > 1):
            raise _RowError('"prompt" is empty')
        prompt, chosen, rejected = _split_conversations(chosen, rejected)
    else:
        prompt = _message_list(prompt_raw, "prompt", "user")
    _check_prompt(prompt)
    if not chosen or not rejected:
        raise _RowError("chosen and rejected must each have an answer after the prompt")
    _check_answer(chosen, "chosen")
    _check_answer(rejected, "rejected")
    if chosen == rejected:
        raise _RowError("chosen and rejected are the same answer: there is nothing to prefer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _kto_row(prompt_raw: Any, completion_raw: Any, label_raw: Any) -> dict[str, Any]:
    for name, raw in (("prompt", prompt_raw), ("completion", completion_raw)):
        if raw is None:
            raise _RowError(f'missing field: "{name}"')
    prompt = _message_list(prompt_raw, "prompt", "user")
    completion = _message_list(completion_raw, "completion", "assistant")
    _check_prompt(prompt)
    _check_answer(completion, "completion")
    label = _kto_label_or_none(label_raw)
    if label is None:
        raise _RowError(
            f"label must be true or false (is the answer desirable?), not {label_raw!r}"
        )
    return {"prompt": prompt, "completion": completion, "label": label}


def make_converter(schema: str, mapping: dict[str, str]) -> Callable[[Any], dict[str, Any]]:
    """A function from a source record to a canonical row; raises _RowError with a reason."""

    def column(key: str) -> str:
        # Detection may leave a required key unmapped (a file with only some of a schema's
        # columns): each row then names the missing field.
        return mapping.get(key, key)

    def get(record: dict[str, Any], key: str) -> Any:
        return record.get(mapping[key]) if key in mapping else None

    def convert(record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise _RowError(f"each row must be a JSON object, not {type(record).__name__}")
        row: dict[str, Any]
        if schema == "preference":
            row = _preference_row(
                get(record, "prompt"), get(record, "chosen"), get(record, "rejected")
            )
        elif schema == "kto":
            row = _kto_row(get(record, "prompt"), get(record, "completion"), get(record, "label"))
        elif schema == "chat":
            if column("messages") not in record:
                raise _RowError(f'missing field: "messages" (column "{column("messages")}")')
            row = {"messages": check_messages(record[column("messages")])}
        elif schema == "token_classification":
            row = _entity_row(record, mapping, column)
        elif schema == "classification":
            row = {
                "text": _text(get(record, "text"), "text", column("text")),
                "label": _label(get(record, "label"), column("label")),
            }
        elif schema == "instruction":
            raw_input = get(record, "input")
            row = {
                "instruction": _text(
                    get(record, "instruction"), "instruction", column("instruction")
                ),
                "input": ""
                if raw_input is None
                else _text(raw_input, "input", column("input"), allow_empty=True),
                "output": _text(get(record, "output"), "output", column("output")),
            }
        else:
            row = {key: _text(get(record, key), key, column(key)) for key in SCHEMAS[schema]}
        split = record.get("split")
        if split in ("train", "validation", "test"):
            row["split"] = split
        return row

    return convert


# --- statistics -----------------------------------------------------------------------------
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


# --- the pass -------------------------------------------------------------------------------
def ingest(
    *,
    path: Path,
    filename: str,
    options: IngestOptions,
    limits: Limits,
    canonical: IO[bytes],
    rejected: IO[bytes],
    max_problems_listed: int = 20,
) -> IngestResult:
    """Convert the file at `path` to canonical JSONL written to `canonical`; rejected rows go
    to `rejected` as JSONL `{"location", "reason", "raw"}`.

    With on_error=reject any problem raises ValidationFailed listing the first problems (the
    caller then stores nothing); with keep_valid the valid rows are kept.
    """
    fmt, compressed = source_format(filename)
    if options.schema is not None and options.schema not in SCHEMAS:
        raise ValidationFailed(
            f"unknown schema {options.schema!r}: choose one of {', '.join(SCHEMAS)}",
            param="schema",
        )
    if options.on_error not in ON_ERROR:
        raise ValidationFailed("on_error must be reject or keep_valid", param="on_error")
    if options.text_split not in TEXT_SPLITS:
        raise ValidationFailed(
            f"text_split must be one of {', '.join(TEXT_SPLITS)}", param="text_split"
        )
    if fmt == "txt" and options.schema == "token_classification":
        fmt = "conll"  # asked for: every line that is not "token tag" is reported
    elif fmt == "txt" and options.schema is None:
        with _open_binary(path, limits) as probe:
            if looks_like_conll(probe.read(CONLL_SAMPLE_BYTES)):
                fmt = "conll"
    if fmt == "txt" and options.schema not in (None, "text"):
        raise ValidationFailed(
            "a plain-text file becomes text rows (or token_classification rows when it is "
            "CoNLL: a token and its tag per line)",
            param="schema",
        )
    if fmt == "conll" and options.schema not in (None, "token_classification"):
        raise ValidationFailed(
            "a CoNLL file (a token and its tag per line) becomes token_classification rows",
            param="schema",
        )
    items, _ = read_records(path, fmt, limits, options.text_split)
    head = list(islice(items, DETECT_ROWS))
    valid_head = [record for _, record in head if not isinstance(record, Problem)]
    if fmt == "txt":
        schema, mapping, confident = "text", {"text": "text"}, True
    elif fmt == "conll":
        schema, mapping, confident = (
            "token_classification",
            {"tokens": "tokens", "tags": "tags"},
            True,
        )
    else:
        schema, mapping, confident = detect_schema(valid_head, options)
    convert = make_converter(schema, mapping)
    stats = StatsCollector(schema)
    digest = hashlib.sha256()
    size = 0
    problems: list[Problem] = []
    problems_count = 0
    seen = 0
    for location, record in chain(head, items):
        seen += 1
        if seen > limits.max_rows:
            raise PayloadTooLarge(
                f"the file has more than the row limit of {limits.max_rows} rows (max_dataset_rows)"
            )
        if isinstance(record, Problem):
            problem = record
        else:
            try:
                row = convert(record)
            except _RowError as exc:
                problem = Problem(location, str(exc), _raw(record))
            else:
                line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
                canonical.write(line)
                digest.update(line)
                size += len(line)
                stats.add(row, line)
                continue
        problems_count += 1
        if len(problems) < max_problems_listed:
            problems.append(problem)
        if options.on_error == "keep_valid":
            rejected.write(
                (
                    json.dumps(
                        {
                            "location": problem.location,
                            "reason": problem.reason,
                            "raw": problem.raw,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                ).encode("utf-8")
            )
    if problems_count and options.on_error == "reject":
        listed = "; ".join(str(p) for p in problems)
        more = problems_count - len(problems)
        raise ValidationFailed(
            listed
            + (f" (and {more} more)" if more else "")
            + f" — {problems_count} problem(s); nothing was stored (upload with "
            "on_error=keep_valid to keep the valid rows)"
        )
    if stats.rows == 0:
        if problems_count:
            raise ValidationFailed(
                f"no valid rows: all {problems_count} rows have problems, first: {problems[0]}"
            )
        raise ValidationFailed("the file is empty: it has no rows to train on")
    return IngestResult(
        source_format=fmt,
        compressed=compressed,
        schema=schema,
        detection={"schema": schema, "column_map": mapping, "confident": confident},
        num_rows=stats.rows,
        sha256=digest.hexdigest(),
        size_bytes=size,
        stats=stats.summary(),
        problems_count=problems_count,
        problems=problems,
    )


def _raw(record: Any) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)[:500]
    except (TypeError, ValueError):
        return repr(record)[:500]


def iter_canonical(handle: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) for a canonical JSONL file (1-based)."""
    for number, line in enumerate((ln for ln in handle if ln.strip()), start=1):
        yield number, json.loads(line)


__all__ = [
    "FORMATS",
    "SCHEMAS",
    "IngestOptions",
    "IngestResult",
    "Limits",
    "Problem",
    "detect_schema",
    "ingest",
    "source_format",
]
