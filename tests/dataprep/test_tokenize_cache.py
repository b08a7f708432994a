"""Tokenization cached by (version, tokenizer, settings); packing into full sequences."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.core.prep_recipe import TokenizeSettings
from workers.dataprep.tokenize import read_sequences, tokenize_version

ROWS = [{"text": f"document {i}: 你好世界 the cat sat on the mat {i % 7}"} for i in range(60)]


def test_a_second_tokenization_of_the_same_version_is_a_cache_hit_that_does_no_work(
    tmp_path: Path,
) -> None:
    settings = TokenizeSettings(tokenizer="scratch", vocab_size=400, max_length=32, packing=True)
    reads = []

    def rows():  # counts how often the data is read: a cache hit reads nothing
        reads.append(1)
        return iter(ROWS)

    first = tokenize_version(
        rows=rows, schema="text", version_sha256="a" * 64, settings=settings, cache_root=tmp_path
    )
    assert not first.cache_hit and len(reads) == 2  # tokenizer training pass + encoding pass
    stamp = os.stat(Path(first.directory) / "ids.bin").st_mtime_ns
    second = tokenize_version(
        rows=rows, schema="text", version_sha256="a" * 64, settings=settings, cache_root=tmp_path
    )
    assert second.cache_hit and second.key == first.key and len(reads) == 2
    assert os.stat(Path(second.directory) / "ids.bin").st_mtime_ns == stamp
    assert second.num_tokens == first.num_tokens

    changed = tokenize_version(
        rows=rows,
        schema="text",
        version_sha256="a" * 64,
        settings=settings.model_copy(update={"max_length": 16}),
        cache_root=tmp_path,
    )
    other_version = tokenize_version(
        rows=rows, schema="text", version_sha256="b" * 64, settings=settings, cache_root=tmp_path
    )
    assert not changed.cache_hit and not other_version.cache_hit
    assert len({first.key, changed.key, other_version.key}) == 3


def test_packing_joins_documents_with_eos_into_full_sequences(tmp_path: Path) -> None:
    settings = TokenizeSettings(tokenizer="scratch", vocab_size=400, max_length=32, packing=True)
    info = tokenize_version(
        rows=lambda: iter(ROWS),
        schema="text",
        version_sha256="c" * 64,
        settings=settings,
        cache_root=tmp_path,
    )
    ids, mask = read_sequences(Path(info.directory))
    assert ids.shape == (info.num_sequences, 32)
    assert info.num_sequences == -(-info.num_tokens // 32)  # ceil: only the last is padded
    assert int(mask.sum()) == info.num_tokens == info.trained_tokens
    eos = 0  # the scratch tokenizer's <|endoftext|>
    assert int((ids[mask == 1] == eos).sum()) == len(ROWS)  # one EOS closes each document
    assert mask[:-1].all()  # every sequence but the last is full of real tokens


def test_without_packing_rows_are_truncated_at_max_length(tmp_path: Path) -> None:
    settings = TokenizeSettings(tokenizer="scratch", vocab_size=400, max_length=8, packing=False)
    info = tokenize_version(
        rows=lambda: iter(ROWS),
        schema="text",
        version_sha256="d" * 64,
        settings=settings,
        cache_root=tmp_path,
    )
    offsets = np.fromfile(Path(info.directory) / "offsets.bin", dtype=np.uint64)
    assert info.num_sequences == len(ROWS) and offsets.size == len(ROWS) + 1
    assert int(np.diff(offsets).max()) == 8
    assert info.truncated_rows == len(ROWS)


def test_an_encoding_error_in_the_background_thread_reaches_the_caller_and_leaves_no_entry(
    tmp_path: Path,
) -> None:
    import pytest

    from workers.dataprep.tokenize import BackgroundSink, TokenSink
    from workers.engine.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["abc abc"] * 5, vocab_size=260, model_max_length=32)
    settings = TokenizeSettings(tokenizer="scratch", vocab_size=300, max_length=8)
    sink = BackgroundSink(
        TokenSink(tokenizer=tokenizer, schema="text", settings=settings, cache_root=tmp_path)
    )
    sink.add([{"text": 5}])  # not a canonical row: the thread fails on this batch
    with pytest.raises(TypeError):
        sink.finish("e" * 64)
    sink.abort()
    assert [p.name for p in tmp_path.iterdir()] == []
