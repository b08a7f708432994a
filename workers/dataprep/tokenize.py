"""Tokenize a dataset version once: cached on disk by (version sha256, tokenizer id, settings).

A cache entry is a folder `<cache_root>/<key>/` holding the tokenizer, the token ids (uint32),
a loss mask (uint8: 1 where the token is trained, by the engine's `loss_mask` rule) and
`meta.json`. It is written in a staging folder and renamed into place, so a folder that exists
is complete: a second run with the same key opens it and does no work.

With packing (causal LM), documents are joined (each ends in EOS) and cut into sequences of
exactly `max_length` tokens, the last one padded with a zero mask; without it each row is
truncated at `max_length` and row starts are kept in `offsets.bin`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np

from app.core.prep_recipe import TokenizeSettings
from workers.dataprep import fields, masking
from workers.dataprep.tokenizers import load_packaged, tokenizer_id, train_scratch
from workers.engine import loss_mask

Row = dict[str, Any]
ENCODE_BATCH = 1000  # rows per call into the Rust tokenizer: fast, and bounded memory
META = "meta.json"


@dataclass
class TokenizedInfo:
    key: str
    directory: str
    cache_hit: bool
    tokenizer_id: str
    num_rows: int
    num_tokens: int
    trained_tokens: int
    truncated_rows: int
    num_sequences: int
    sequence_length: int
    packing: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(version_sha256: str, settings: TokenizeSettings) -> str:
    ident = tokenizer_id(settings.tokenizer, vocab_size=settings.vocab_size)
    payload = json.dumps(
        {"version": version_sha256, "tokenizer": ident, "settings": settings.model_dump()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def load_cached(cache_root: Path, key: str) -> TokenizedInfo | None:
    meta = cache_root / key / META
    if not meta.is_file():
        return None
    info = TokenizedInfo(**json.loads(meta.read_text()))
    info.cache_hit = True
    info.directory = str(cache_root / key)
    return info


def _loss_mask(encoding: Any, item: masking.Rendered) -> np.ndarray:
    """1 where the loss counts the token: `loss_mask.trained_mask`, the rule training uses."""
    target = item.for_loss
    if target.whole:  # plain text: no offsets needed (encoded without them)
        return np.ones(len(encoding.ids), dtype=np.uint8)
    return loss_mask.trained_mask(encoding.offsets, target.spans).astype(np.uint8)


class _Writer:
    """Appends ids and mask; with packing emits exact `length`-token sequences."""

    def __init__(self, folder: Path, *, length: int, packing: bool, pad_id: int) -> None:
        self.ids: IO[bytes] = (folder / "ids.bin").open("wb")
        self.mask: IO[bytes] = (folder / "loss_mask.bin").open("wb")
        self.offsets: IO[bytes] | None = None if packing else (folder / "offsets.bin").open("wb")
        self.length, self.packing, self.pad_id = length, packing, pad_id
        self.carry_ids = np.zeros(0, dtype=np.uint32)
        self.carry_mask = np.zeros(0, dtype=np.uint8)
        self.written = 0  # tokens in ids.bin
        self.sequences = 0

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        if not self.packing:
            assert self.offsets is not None
            np.asarray([self.written], dtype=np.uint64).tofile(self.offsets)
            ids.tofile(self.ids)
            mask.tofile(self.mask)
            self.written += ids.size
            self.sequences += 1
            return
        self.carry_ids = np.concatenate([self.carry_ids, ids])
        self.carry_mask = np.concatenate([self.carry_mask, mask])
        full = self.carry_ids.size // self.length * self.length
        if full:
            self.carry_ids[:full].tofile(self.ids)
            self.carry_mask[:full].tofile(self.mask)
            self.written += full
            self.sequences += full // self.length
            self.carry_ids, self.carry_mask = self.carry_ids[full:], self.carry_mask[full:]

    def close(self) -> None:
        if self.packing and self.carry_ids.size:
            pad = self.length - self.carry_ids.size
            np.concatenate([self.carry_ids, np.full(pad, self.pad_id, np.uint32)]).tofile(self.ids)
            np.concatenate([self.carry_mask, np.zeros(pad, np.uint8)]).tofile(self.mask)
            self.written += self.length
            self.sequences += 1
        if self.offsets is not None:
            np.asarray([self.written], dtype=np.uint64).tofile(self.offsets)
            self.offsets.close()
        self.ids.close()
        self.mask.close()


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


class TokenSink:
    """Tokenizes batches of rows into a staging folder; `finish(version_sha256)` files the
    result under its cache key. Used by `tokenize_version`, and by a preparation that tokenizes
    its output rows in the same pass as it writes them (no second read of the file)."""

    def __init__(
        self, *, tokenizer: Any, schema: str, settings: TokenizeSettings, cache_root: Path
    ) -> None:
        self.tokenizer, self.schema, self.settings = tokenizer, schema, settings
        self.cache_root = cache_root
        cache_root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
        tokenizer.save_pretrained(str(self.staging / "tokenizer"))
        pad_id = tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (tokenizer.eos_token_id or 0)
        self.writer = _Writer(
            self.staging, length=settings.max_length, packing=settings.packing, pad_id=pad_id
        )
        self.backend = tokenizer.backend_tokenizer
        self.counts = {"rows": 0, "tokens": 0, "trained": 0, "truncated": 0}

    def add(self, batch: list[Row]) -> None:
        settings = self.settings
        rendered = [
            masking.render_row(
                self.tokenizer, row, self.schema, chat_template=settings.chat_template
            )
            for row in batch
        ]
        # Offsets are only needed to mask part of a row; without them encoding is faster.
        partial = any(r.for_loss.spans and not r.for_loss.whole for r in rendered)
        encode = self.backend.encode_batch if partial else self.backend.encode_batch_fast
        encodings = encode([r.text for r in rendered], add_special_tokens=False)
        counts = self.counts
        for item, encoding in zip(rendered, encodings, strict=True):
            ids = np.asarray(encoding.ids, dtype=np.uint32)
            mask = _loss_mask(encoding, item)
            counts["tokens"] += ids.size
            if not settings.packing and ids.size > settings.max_length:
                counts["truncated"] += 1
                ids, mask = ids[: settings.max_length], mask[: settings.max_length]
            counts["trained"] += int(mask.sum())
            self.writer.add(ids, mask)
        counts["rows"] += len(batch)

    def finish(self, version_sha256: str) -> TokenizedInfo:
        self.writer.close()
        settings = self.settings
        key = cache_key(version_sha256, settings)
        info = TokenizedInfo(
            key=key,
            directory=str(self.cache_root / key),
            cache_hit=False,
            tokenizer_id=tokenizer_id(settings.tokenizer, vocab_size=settings.vocab_size),
            num_rows=self.counts["rows"],
            num_tokens=self.counts["tokens"],
            trained_tokens=self.counts["trained"],
            truncated_rows=self.counts["truncated"],
            num_sequences=self.writer.sequences,
            sequence_length=settings.max_length,
            packing=settings.packing,
        )
        (self.staging / META).write_text(json.dumps(info.as_dict(), indent=1))
        try:
            os.rename(self.staging, self.cache_root / key)
        except OSError:  # the same key is already there (another worker, an earlier run)
            shutil.rmtree(self.staging, ignore_errors=True)
        return info

    def abort(self) -> None:
        self.writer.close()
        shutil.rmtree(self.staging, ignore_errors=True)


class BackgroundSink:
    """A TokenSink fed through a small queue and drained by one thread.

    The Rust tokenizer releases the GIL while it encodes, so reading, cleaning and writing the
    next batch in Python overlaps the encoding of this one. Memory stays bounded: at most
    `depth` batches wait. An error in the thread is raised again by the next `add` or `finish`.
    """

    _DONE = object()

    def __init__(self, sink: TokenSink, *, depth: int = 2) -> None:
        self.sink = sink
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="token-sink", daemon=True)
        self._thread.start()

    @property
    def counts(self) -> dict[str, int]:
        return self.sink.counts

    def _drain(self) -> None:
        while (batch := self._queue.get()) is not self._DONE:
            if self._error is None:
                try:
                    self.sink.add(batch)
                except BaseException as exc:  # re-raised in the producer's thread
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, batch: list[Row]) -> None:
        self._check()
        self._queue.put(batch)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()

    def finish(self, version_sha256: str) -> TokenizedInfo:
        self._stop()
        self._check()
        return self.sink.finish(version_sha256)

    def abort(self) -> None:
        self._stop()
        self.sink.abort()


def load_tokenizer(
    settings: TokenizeSettings,
    texts: Callable[[], Iterable[str]],
    *,
    packaged_cache: Path | None = None,
) -> Any:
    """The packaged tokenizer, or a scratch one trained on `texts` (one pass)."""
    if settings.tokenizer == "scratch":
        return train_scratch(
            texts(), vocab_size=settings.vocab_size, max_length=settings.max_length
        )
    return load_packaged(settings.tokenizer, packaged_cache)


def tokenize_version(
    *,
    rows: Callable[[], Iterable[Row]],
    schema: str,
    version_sha256: str,
    settings: TokenizeSettings,
    cache_root: Path,
    on_progress: Callable[[int], None] | None = None,
    packaged_cache: Path | None = None,
) -> TokenizedInfo:
    """Tokenize every row (or open the cache entry that already holds the result)."""
    cached = load_cached(cache_root, cache_key(version_sha256, settings))
    if cached is not None:
        return cached
    tokenizer = load_tokenizer(
        settings,
        lambda: (text for row in rows() for text in fields.texts(row, schema)),
        packaged_cache=packaged_cache,
    )
    sink = BackgroundSink(
        TokenSink(tokenizer=tokenizer, schema=schema, settings=settings, cache_root=cache_root)
    )
    try:
        for batch in _batches(rows(), ENCODE_BATCH):
            sink.add(batch)
            if on_progress is not None:
                on_progress(sink.counts["rows"])
        return sink.finish(version_sha256)
    except BaseException:
        sink.abort()
        raise


def read_sequences(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Packed ids and loss mask as [sequences, length] arrays (memory-mapped)."""
    meta = json.loads((directory / META).read_text())
    length = meta["sequence_length"]
    ids = np.memmap(directory / "ids.bin", dtype=np.uint32, mode="r").reshape(-1, length)
    mask = np.memmap(directory / "loss_mask.bin", dtype=np.uint8, mode="r").reshape(-1, length)
    return ids, mask
