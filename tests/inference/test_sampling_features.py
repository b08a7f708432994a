"""The transformers lanes honour the sampling side of the OpenAI surface like llama.cpp does:
token and prompt log-probabilities (max_tokens 0 included), token-id prompts, logit_bias,
presence/frequency penalties and JSON schemas enforced by xgrammar, on a tiny scratch GPT-2.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from tests.inference.test_inference_server import client, settings  # noqa: F401 - fixtures

PROMPT = "the cat sat on the mat"


def _generate(client: TestClient, **body: Any) -> dict[str, Any]:  # noqa: F811
    answer = client.post("/generate", json={"name": "tiny", "temperature": 0, **body})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_logprobs_give_one_entry_per_token_with_the_greedy_choice_on_top(
    client: TestClient,  # noqa: F811
) -> None:
    body = _generate(client, prompt=PROMPT, max_tokens=5, logprobs=True, top_logprobs=3)
    entries = body["logprobs"]
    assert len(entries) == body["completion_tokens"] == 5
    for entry in entries:
        assert entry["logprob"] <= 0
        assert [t["token"] for t in entry["top_logprobs"]][0] == entry["token"]
        assert len(entry["top_logprobs"]) == 3
    assert "".join(e["token"] for e in entries) == body["text"]


def test_prompt_logprobs_with_max_tokens_0_score_the_prompt_and_token_ids_score_alike(
    client: TestClient,  # noqa: F811
) -> None:
    text = _generate(client, prompt=PROMPT, max_tokens=0, prompt_logprobs=True)
    assert (text["text"], text["completion_tokens"]) == ("", 0)
    entries = text["prompt_logprobs"]
    assert len(entries) == text["prompt_tokens"]
    assert entries[0]["logprob"] is None and all(e["logprob"] < 0 for e in entries[1:])
    assert "".join(e["token"] for e in entries) == PROMPT

    ids = client.app.state.inference.registry.get("tiny").tokenizer(PROMPT)["input_ids"]
    by_ids = _generate(client, prompt_ids=ids, max_tokens=0, prompt_logprobs=True)
    assert [e["logprob"] for e in by_ids["prompt_logprobs"]] == [e["logprob"] for e in entries]
    refused = client.post("/generate", json={"name": "tiny", "prompt_ids": [10**6]})
    assert refused.status_code == 400 and "vocabulary" in refused.text


def test_logit_bias_and_penalties_change_what_is_chosen(client: TestClient) -> None:  # noqa: F811
    plain = _generate(client, prompt=PROMPT, max_tokens=8, logprobs=True)
    favourite = client.app.state.inference.registry.get("tiny").tokenizer("cat")["input_ids"][0]
    biased = _generate(
        client, prompt=PROMPT, max_tokens=4, logprobs=True, logit_bias={str(favourite): 100}
    )
    assert {e["token"] for e in biased["logprobs"]} == {"cat"}
    penalised = _generate(
        client, prompt=PROMPT, max_tokens=8, frequency_penalty=2, presence_penalty=2
    )
    assert penalised["text"] != plain["text"]


def test_a_json_schema_is_enforced_by_the_grammar(client: TestClient) -> None:  # noqa: F811
    schema = {
        "type": "object",
        "properties": {"pet": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
        "required": ["pet", "legs"],
        "additionalProperties": False,
    }
    body = _generate(
        client,
        prompt=PROMPT,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    if body["finish_reason"] == "stop":
        value = json.loads(body["text"])
        assert value["pet"] in ("cat", "dog") and isinstance(value["legs"], int)
    else:  # a random model may write digits until the limit: still the schema's prefix
        assert body["text"].replace(" ", "").startswith('{"pet":"')
    any_object = _generate(
        client, prompt=PROMPT, max_tokens=12, response_format={"type": "json_object"}
    )
    assert any_object["text"].startswith("{")
