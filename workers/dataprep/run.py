"""One preparation, file to file: canonical JSONL in, cleaned (and split) canonical JSONL out.

This is what the Celery task `llmide.prepare_dataset` and `bench/dataset_ingest.py` both run:
rows stream from the parent version's file through the recipe's steps into a new file hashed
while it is written; memory holds one batch plus the steps' own state (dedup hashes, MinHash
signatures, one byte per row for a split).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import datacontract as contract
from app.core.prep_recipe import Recipe
from workers.dataprep import fields
from workers.dataprep.pipeline import BATCH_ROWS, Pipeline
from workers.dataprep.split import assign_splits
from workers.engine.paragraphs import read_paragraphs

Row = dict[str, Any]
Progress = Callable[[float], None]


def _batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


class RowError(ValueError):
    """A line of the source file that is not a canonical row; names the line."""


def read_rows(
    path: Path, schema: str, *, on_bytes: Callable[[int], None] | None = None
) -> Iterator[Row]:
    """Canonical rows of a JSONL file, checked against the schema's keys as they stream."""
    keys = fields.text_keys(schema)
    consumed = 0
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            consumed += len(line)
            if on_bytes is not None and line_no % 1000 == 0:
                on_bytes(consumed)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise RowError(f"line {line_no}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise RowError(f"line {line_no}: not a JSON object")
            if schema in contract.MESSAGE_KEYS:
                for key in contract.MESSAGE_KEYS[schema]:
                    if not isinstance(row.get(key), list):
                        raise RowError(f'line {line_no}: a {schema} row needs a "{key}" list')
            elif any(not isinstance(row.get(k, ""), str) for k in keys):
                raise RowError(f"line {line_no}: {', '.join(keys)} must be strings")
            yield row
    if on_bytes is not None:
        on_bytes(consumed)


def read_text_paragraphs(path: Path) -> Iterator[Row]:
    """A plain-text file's paragraphs as text rows (old "txt" uploads), as training reads them."""
    return ({"text": paragraph} for paragraph in read_paragraphs(path))


class _HashingWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.digest = hashlib.sha256()
        self.rows = 0
        self.size = 0

    def write(self, row: Row) -> None:
        data = json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"
        self.handle.write(data)
        self.digest.update(data)
        self.rows += 1
        self.size += len(data)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


@dataclass
class PreparedFile:
    path: Path
    sha256: str
    num_rows: int
    size_bytes: int
    report: dict[str, Any]


def prepare_file(
    *,
    source: Path,
    schema: str,
    recipe: Recipe,
    workdir: Path,
    on_progress: Progress | None = None,
    sink: Any = None,
    packaged_cache: Path | None = None,
) -> PreparedFile:
    """Run the recipe's steps (and split) over `source` into a new file inside `workdir`.

    `sink` (a `tokenize.TokenSink`) receives the output rows batch by batch as they are
    written, so a preparation that also tokenizes reads its data once."""
    total = max(source.stat().st_size, 1)
    clean_share = 0.7 if recipe.split else 0.95

    def progress(done: int) -> None:
        if on_progress is not None:
            on_progress(clean_share * min(done / total, 1.0))

    pipeline = Pipeline(recipe.steps, schema, packaged_cache=packaged_cache)
    fd, cleaned_name = tempfile.mkstemp(prefix="prep-", suffix=".jsonl", dir=workdir)
    os.close(fd)
    cleaned = _HashingWriter(Path(cleaned_name))
    rows_in = 0

    def counted() -> Iterator[Row]:
        nonlocal rows_in
        for row in read_rows(source, schema, on_bytes=progress):
            rows_in += 1
            yield row

    try:
        final_sink = sink if recipe.split is None else None
        for batch in pipeline.run_batches(counted()):
            for row in batch:
                cleaned.write(row)
            if final_sink is not None:
                final_sink.add(batch)
        cleaned.close()
        report: dict[str, Any] = {
            "rows_in": rows_in,
            "steps": [r.as_dict() for r in pipeline.reports],
        }
        result = cleaned
        if recipe.split is not None:
            fd, split_name = tempfile.mkstemp(prefix="split-", suffix=".jsonl", dir=workdir)
            os.close(fd)
            result = _HashingWriter(Path(split_name))
            counts: Counter[str] = Counter()
            try:
                split_rows = assign_splits(
                    lambda: read_rows(cleaned.path, schema), schema, recipe.split
                )
                for i, batch in enumerate(_batched(split_rows, BATCH_ROWS), start=1):
                    for row in batch:
                        result.write(row)
                        counts[row["split"]] += 1
                    if sink is not None:
                        sink.add(batch)
                    if on_progress is not None:
                        done = i * BATCH_ROWS / max(cleaned.rows, 1)
                        on_progress(clean_share + 0.25 * min(done, 1.0))
                result.close()
            except BaseException:
                result.path.unlink(missing_ok=True)
                raise
            finally:
                cleaned.path.unlink(missing_ok=True)
            report["split"] = {
                name: counts.get(name, 0) for name in ("train", "validation", "test")
            }
        report["rows_out"] = result.rows
    except BaseException:
        cleaned.path.unlink(missing_ok=True)
        raise
    if on_progress is not None:
        on_progress(0.95)
    return PreparedFile(
        path=result.path,
        sha256=result.digest.hexdigest(),
        num_rows=result.rows,
        size_bytes=result.size,
        report=report,
    )
