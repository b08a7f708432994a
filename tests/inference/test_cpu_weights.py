"""A small Q4_1 GGUF is served on a CPU as its q8_0 copy (workers/inference/cpu_weights.py).

The copy is made once per file and reused, scores text like the original, and a deployment
that opts in (LLMIDE_LLAMACPP_REQUANTIZE=true) runs it and says so; files already in a fast
type, and files too big for the copy to pay, are served as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.inference.test_llamacpp import packaged_gguf
from workers.engine.gguf import ensure_requantized
from workers.inference.cpu_weights import file_type, requantize_reason

TEXTS = [
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Once upon a time, there was a little girl who lived in a village near the forest.",
    "The three primary colors are red, yellow and blue.",
]
Q4_1, Q8_0 = 3, 7  # llama_ftype values


@pytest.fixture(scope="module")
def requantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("gguf-cache")
    return cache, ensure_requantized(packaged_gguf(), cache, quantization="q8_0")


def test_the_packaged_q4_1_file_is_worth_requantizing_and_says_why() -> None:
    gguf = packaged_gguf()
    assert file_type(gguf) == Q4_1
    reason = requantize_reason(gguf)
    assert reason is not None
    assert "Q4_1" in reason and "q8_0" in reason and "LLMIDE_LLAMACPP_REQUANTIZE" in reason


def test_the_q8_0_copy_is_written_once_and_reused(requantized: tuple[Path, Path]) -> None:
    cache, path = requantized
    assert file_type(path) == Q8_0
    written = path.stat().st_mtime_ns
    again = ensure_requantized(packaged_gguf(), cache, quantization="q8_0")
    assert again == path and again.stat().st_mtime_ns == written
    assert [p.name for p in cache.iterdir() if p.name.startswith(".gguf-")] == []


def test_a_file_already_in_a_fast_type_is_served_as_it_is(requantized: tuple[Path, Path]) -> None:
    assert requantize_reason(requantized[1]) is None


def test_a_file_whose_copy_would_be_too_big_is_served_as_it_is() -> None:
    assert requantize_reason(packaged_gguf(), max_bytes=os.path.getsize(packaged_gguf())) is None


def _teacher_forced(path: Path) -> tuple[list[float], list[list[int]]]:
    """Per prompt: mean negative log-likelihood of its tokens, and the argmax at each position."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    try:
        losses, choices = [], []
        for text in TEXTS:
            llm.reset()
            tokens = llm.tokenize(text.encode())
            llm.eval(tokens)
            scores = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
            shifted = scores - scores.max(axis=1, keepdims=True)
            logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            positions = np.arange(len(tokens) - 1)
            losses.append(float(-logprobs[positions, tokens[1:]].mean()))
            choices.append([int(t) for t in scores.argmax(axis=1)])
        return losses, choices
    finally:
        llm.close()


def test_the_q8_0_copy_scores_text_like_the_original(requantized: tuple[Path, Path]) -> None:
    """Faithful where it can be checked without chaos: fed the same text, the copy picks the
    same next token almost everywhere and finds the text as likely (within 3%)."""
    original_loss, original_choice = _teacher_forced(packaged_gguf())
    copy_loss, copy_choice = _teacher_forced(requantized[1])
    pairs = [
        (a, b)
        for left, right in zip(original_choice, copy_choice, strict=True)
        for a, b in zip(left, right, strict=True)
    ]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    assert agreement >= 0.95, agreement
    for before, after in zip(original_loss, copy_loss, strict=True):
        assert abs(after - before) <= 0.03 * before, (original_loss, copy_loss)


def test_a_deployment_opting_in_runs_the_copy_and_says_so(tmp_path: Path) -> None:
    from workers.inference.registry import ModelRegistry

    settings = Settings(
        data_dir=tmp_path,
        inference_backend="llamacpp",
        llamacpp_threads=1,
        llamacpp_requantize=True,
    )
    models = ModelRegistry(settings)
    try:
        entry = models.ensure("smol", str(packaged_gguf()))
        assert entry.done.wait(timeout=300)
        assert entry.status == "ready", entry.error
        assert entry.backend == "llamacpp"
        assert "re-quantised to q8_0" in (entry.backend_reason or "")
        copies = list((tmp_path / "gguf-cache").glob("*-q8_0/*.gguf"))
        assert len(copies) == 1 and file_type(copies[0]) == Q8_0
    finally:
        models.unload_all()
