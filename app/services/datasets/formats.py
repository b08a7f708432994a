"""Which format an upload is in: from its file name (`data.csv.gz`), and for plain text whether
it is really CoNLL (a token and its tag per line); and the gzip-aware opening every reader uses,
capped so a small compressed file cannot expand without bound."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO, Any

from app.core.errors import PayloadTooLarge, ValidationFailed
from datacontract import ner

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
GZIP_MAGIC = b"\x1f\x8b"


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


def open_binary(path: Path, max_decompressed_bytes: int) -> io.BufferedReader:
    """The file for reading, gunzipped on the fly when it starts with the gzip magic (whatever
    its name says), and stopped at `max_decompressed_bytes`."""
    handle = path.open("rb")
    if handle.peek(2)[:2] == GZIP_MAGIC:
        inner = gzip.GzipFile(fileobj=handle, mode="rb")
        return io.BufferedReader(_CappedReader(inner, max_decompressed_bytes), 1 << 16)
    return handle


CONLL_DOCSTART = "-DOCSTART-"
CONLL_DETECT_LINES = 200
CONLL_SAMPLE_BYTES = 1 << 16


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
