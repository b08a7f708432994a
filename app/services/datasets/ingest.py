"""Streaming ingest of uploaded files into canonical JSONL (see DATA_CONTRACT.md).

One pass over the file, bounded memory whatever its size: a reader per format (`readers`,
the format named by `formats`) yields source records with their line/row number, the schema is
detected from the first records or given by the user with a column map (`detection`), each
record is converted to a canonical row or rejected with a short reason (`converters`), and
valid rows are written out while statistics are gathered (`stats`). Nothing here touches the
database: the caller decides what to store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

from app.core.errors import PayloadTooLarge, ValidationFailed
from app.services.datasets import converters, detection, formats, readers
from app.services.datasets.readers import Limits, Problem
from app.services.datasets.stats import StatsCollector

TEXT_SPLITS = ("blocks", "lines", "file")
ON_ERROR = ("reject", "keep_valid")
DETECT_ROWS = 200


@dataclass
class IngestOptions:
    schema: str | None = None
    column_map: dict[str, str] = field(default_factory=dict)
    on_error: str = "reject"
    text_split: str = "blocks"


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
    fmt, compressed = formats.source_format(filename)
    if options.schema is not None and options.schema not in detection.SCHEMAS:
        raise ValidationFailed(
            f"unknown schema {options.schema!r}: choose one of {', '.join(detection.SCHEMAS)}",
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
        with formats.open_binary(path, limits.max_decompressed_bytes) as probe:
            if formats.looks_like_conll(probe.read(formats.CONLL_SAMPLE_BYTES)):
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
    items, _ = readers.read_records(path, fmt, limits, options.text_split)
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
        schema, mapping, confident = detection.detect_schema(
            valid_head, schema=options.schema, column_map=options.column_map
        )
    convert = converters.make_converter(schema, mapping)
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
            except converters.RowError as exc:
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
