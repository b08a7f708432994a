"""Readers: one per file format, each yielding source records with where they came from.

A reader streams (bounded memory whatever the file's size) and yields `(location, record)`
pairs; a line it cannot decode becomes a `Problem` in the stream rather than an error, so the
ingest pass can report it and go on. What a record means is not its business: the converters
decide that.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.core import safe_json
from app.core.errors import ValidationFailed
from app.services.datasets.formats import CONLL_DOCSTART, GZIP_MAGIC, open_binary

CONLL_LINES = "_conll_lines"  # a CoNLL sentence's line numbers, so a bad tag names its line


@dataclass
class Limits:
    max_line_bytes: int
    max_rows: int
    max_decompressed_bytes: int
    max_document_bytes: int


@dataclass
class Problem:
    location: str  # "line 3" or "row 3 (line 7)"
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


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
        compressed = probe.read(2) == GZIP_MAGIC
    if compressed:  # Parquet needs random access: decompress to a file next to it first
        tmp = path.with_name(path.name + ".parquet")
        with open_binary(path, limits.max_decompressed_bytes) as src, tmp.open("wb") as dst:
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
    binary = open_binary(path, limits.max_decompressed_bytes)
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
