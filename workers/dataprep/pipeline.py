"""Run an ordered list of cleaning steps over a stream of canonical rows, counting per step.

Rows flow through in batches (bounded memory: one batch per step in flight); each step counts
the rows it received, removed and changed, which becomes the version's report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from app.core import prep_recipe as r
from workers.dataprep import cleaning, fields, language
from workers.dataprep.fields import Row
from workers.dataprep.neardup import NearDuplicateIndex

BATCH_ROWS = 1000


@dataclass
class StepReport:
    step: str
    rows_in: int = 0
    removed: int = 0
    changed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stage:
    """One step: a batch of rows in, the surviving (possibly changed) rows out."""

    def __init__(self, name: str, schema: str) -> None:
        self.report = StepReport(step=name)
        self.schema = schema

    def __call__(self, batch: list[Row]) -> list[Row]:
        self.report.rows_in += len(batch)
        out = self.apply(batch)
        self.report.removed += len(batch) - len(out)
        return out

    def apply(self, batch: list[Row]) -> list[Row]:
        raise NotImplementedError


class _Transform(_Stage):
    def __init__(self, name: str, schema: str, fn: Callable[[str], str]) -> None:
        super().__init__(name, schema)
        self.fn = fn

    def apply(self, batch: list[Row]) -> list[Row]:
        out = []
        for row in batch:
            new = fields.map_texts(row, self.schema, self.fn)
            if fields.texts(new, self.schema) != fields.texts(row, self.schema):
                self.report.changed += 1
            out.append(new)
        return out


class _Filter(_Stage):
    """Keeps the rows for which `keep` answers True; `keep` sees a whole batch at once."""

    def __init__(self, name: str, schema: str, keep: Callable[[list[Row]], list[bool]]) -> None:
        super().__init__(name, schema)
        self.keep = keep

    def apply(self, batch: list[Row]) -> list[Row]:
        return [row for row, keep in zip(batch, self.keep(batch), strict=True) if keep]


def _length_keep(
    step: r.LengthFilter, schema: str, packaged_cache: Path | None, batch: list[Row]
) -> list[bool]:
    if step.unit == "chars":
        sizes = [sum(len(t) for t in fields.texts(row, schema)) for row in batch]
    else:
        from workers.dataprep.tokenizers import load_packaged

        backend = load_packaged(step.tokenizer or "", packaged_cache).backend_tokenizer
        per_row = [fields.texts(row, schema) for row in batch]
        flat = [t for texts in per_row for t in texts]
        counts = iter(len(e.ids) for e in backend.encode_batch(flat, add_special_tokens=False))
        sizes = [sum(next(counts) for _ in texts) for texts in per_row]
    low = step.min if step.min is not None else 0
    high = step.max if step.max is not None else float("inf")
    return [low <= size <= high for size in sizes]


def _dedup_key(row: Row, schema: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    if schema == "chat":
        for message in row.get("messages", ()):
            digest.update(str(message.get("role")).encode() + b"\x1e")
            digest.update(str(message.get("content")).encode("utf-8", "surrogatepass") + b"\x1f")
    else:
        for text in fields.texts(row, schema):
            digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    return digest.digest()


def _exact_dedup(schema: str) -> Callable[[list[Row]], list[bool]]:
    seen: set[bytes] = set()

    def keep(batch: list[Row]) -> list[bool]:
        answers = []
        for row in batch:
            key = _dedup_key(row, schema)
            answers.append(key not in seen)
            seen.add(key)
        return answers

    return keep


def _near_dedup(step: r.NearDedup, schema: str) -> Callable[[list[Row]], list[bool]]:
    index = NearDuplicateIndex(
        threshold=step.threshold, num_perm=step.num_perm, ngram=step.ngram, seed=step.seed
    )
    return lambda batch: [not index.is_duplicate(fields.joined_text(r_, schema)) for r_ in batch]


def detect_language(text: str, wanted: Iterable[str] = ()) -> str:
    """ISO 639-1 code of the text's language ("zh" for both Chinese scripts), "" if unknown."""
    return language.detect(text, wanted)


def _language_keep(step: r.LanguageFilter, schema: str, batch: list[Row]) -> list[bool]:
    wanted = set(step.languages)
    return [detect_language(fields.joined_text(row, schema), wanted) in wanted for row in batch]


def build_stage(step: Any, schema: str, packaged_cache: Path | None = None) -> _Stage:
    name = step.step
    if isinstance(step, r.StripHtml):
        return _Transform(name, schema, cleaning.strip_html)
    if isinstance(step, r.Nfkc):
        return _Transform(name, schema, cleaning.nfkc)
    if isinstance(step, r.Whitespace):
        fn = partial(cleaning.clean_whitespace, keep_newlines=step.keep_newlines)
        return _Transform(name, schema, fn)
    if isinstance(step, r.PiiMask):
        fn = partial(cleaning.mask_pii, emails=step.emails, phones=step.phones, urls=step.urls)
        return _Transform(name, schema, fn)
    if isinstance(step, r.LengthFilter):
        return _Filter(name, schema, partial(_length_keep, step, schema, packaged_cache))
    if isinstance(step, r.ExactDedup):
        return _Filter(name, schema, _exact_dedup(schema))
    if isinstance(step, r.NearDedup):
        return _Filter(name, schema, _near_dedup(step, schema))
    if isinstance(step, r.LanguageFilter):
        return _Filter(name, schema, partial(_language_keep, step, schema))
    raise ValueError(f"unknown step {name!r}")


class Pipeline:
    """The recipe's steps in order; `run` streams rows through them, `reports` counts."""

    def __init__(
        self, steps: Sequence[Any], schema: str, *, packaged_cache: Path | None = None
    ) -> None:
        fields.text_keys(schema)  # an unknown schema fails here, before any row is read
        self.stages = [build_stage(step, schema, packaged_cache) for step in steps]

    @property
    def reports(self) -> list[StepReport]:
        return [stage.report for stage in self.stages]

    def run_batches(
        self, rows: Iterable[Row], *, batch_rows: int = BATCH_ROWS
    ) -> Iterator[list[Row]]:
        iterator = iter(rows)
        while batch := list(islice(iterator, batch_rows)):
            for stage in self.stages:
                batch = stage(batch)
                if not batch:
                    break
            if batch:
                yield batch

    def run(self, rows: Iterable[Row], *, batch_rows: int = BATCH_ROWS) -> Iterator[Row]:
        for batch in self.run_batches(rows, batch_rows=batch_rows):
            yield from batch
