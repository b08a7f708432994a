"""OpenAI `chat.completions` and `completions`: model resolution, errors, answers and streams.

The inference server is another process; where a test needs an answer from it, its client
functions are replaced by fakes (real generation is covered by the end-to-end tests).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from app.services.serving import inference_client
from tests.conftest import Team
from tests.openai.conftest import OpenAIFor, raw_json
from tests.openai.openai_schema import assert_openai_error, assert_schema

HELLO = [{"role": "user", "content": "hello"}]


class FakeInference:
    """Stands in for the inference server's client; records what it was asked."""

    def __init__(self, deltas: tuple[str, ...] = ("Hel", "lo", "!"), fail_after: int | None = None):
        self.deltas = deltas
        self.fail_after = fail_after
        self.calls: list[dict[str, Any]] = []

    async def generate(self, name: str, path: str, **params: Any) -> dict[str, Any]:
        self.calls.append({"name": name, "path": path, **params})
        return {
            "text": "".join(self.deltas),
            "finish_reason": "stop",
            "prompt_tokens": 5,
            "completion_tokens": len(self.deltas),
        }

    async def generate_stream(self, name: str, path: str, **params: Any) -> AsyncIterator[dict]:
        self.calls.append({"name": name, "path": path, **params})
        for index, delta in enumerate(self.deltas):
            if index == self.fail_after:
                raise inference_client.InferenceError(500, "the model crashed")
            yield {"delta": delta}
        yield {"finish_reason": "length", "prompt_tokens": 5, "completion_tokens": len(self.deltas)}


@pytest.fixture
def fake_inference(monkeypatch: pytest.MonkeyPatch) -> FakeInference:
    fake = FakeInference()
    monkeypatch.setattr(inference_client, "generate", fake.generate)
    monkeypatch.setattr(inference_client, "generate_stream", fake.generate_stream)
    return fake


def _sse_payloads(client: TestClient, headers: dict[str, str], url: str, body: dict) -> list[Any]:
    with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line.removeprefix("data: ") for line in lines]


@pytest.mark.parametrize("url", ["/v1/chat/completions", "/v1/completions"])
def test_generation_with_an_unknown_model_is_not_found_naming_the_model(
    team: Team, url: str
) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "prompt": "hi"}
    error = assert_openai_error(team.viewer.post(url, json=body), 404)
    assert error["param"] == "model"
    assert "gpt-4o" in error["message"]


def test_chat_completion_through_the_openai_package_maps_model_errors(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="fine-tune it first"):
        oa.chat.completions.create(model="scratch-tiny", messages=HELLO)
    error = assert_openai_error(
        team.owner.post("/v1/chat/completions", json={"model": "scratch-tiny", "messages": HELLO}),
        400,
    )
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": []}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"hello": 5}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"frobnicate": True}, "frobnicate"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_chat_completion_refuses_what_it_cannot_do_with_a_clear_400(
    team: Team, fine_tuned_model: str, body: dict, param: str
) -> None:
    request = {"model": fine_tuned_model, "messages": HELLO, **body}
    error = assert_openai_error(team.owner.post("/v1/chat/completions", json=request), 400)
    assert error["param"] == param


def test_chat_completion_when_the_inference_server_is_down_is_a_503_to_retry(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(get_settings(), "inference_url", f"http://127.0.0.1:{port}")

    for stream in (False, True):
        response = team.owner.post(
            "/v1/chat/completions",
            json={"model": fine_tuned_model, "messages": HELLO, "stream": stream},
        )
        error = assert_openai_error(response, 503)
        assert error["message"] == "the inference server is not reachable; retry shortly"
        assert response.headers["Retry-After"] == "2"
    with pytest.raises(openai.InternalServerError):
        openai_for(team.owner).chat.completions.create(model=fine_tuned_model, messages=HELLO)


def test_chat_completion_relays_the_inference_answer_with_usage(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    raw = openai_for(team.viewer).chat.completions.with_raw_response.create(
        model=fine_tuned_model,
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
            },
        ],
        max_completion_tokens=7,
        temperature=0,
        stop="\n",
        seed=3,
    )
    body = raw_json(raw, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion"
    assert body["model"] == fine_tuned_model
    assert body["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert raw.parse().choices[0].message.content == "Hello!"

    (call,) = fake_inference.calls
    assert call["name"].startswith("mv-")
    assert call["path"].endswith("/final")
    assert call["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert (call["max_tokens"], call["temperature"]) == (7, 0)
    assert (call["stop"], call["seed"]) == (["\n"], 3)
    assert "top_p" not in call


def test_chat_completion_streams_role_content_finish_and_usage_chunks(
    team: Team,
    client: TestClient,
    openai_for: OpenAIFor,
    fine_tuned_model: str,
    fake_inference: FakeInference,
) -> None:
    request = {
        "model": fine_tuned_model,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payloads = _sse_payloads(client, team.owner.headers, "/v1/chat/completions", request)
    assert payloads[-1] == "[DONE]"
    chunks = [
        assert_schema(json.loads(p), "CreateChatCompletionStreamResponse") for p in payloads[:-1]
    ]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hel", "lo", "!"]
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }

    stream = openai_for(team.owner).chat.completions.create(
        model=fine_tuned_model, messages=HELLO, stream=True
    )
    received = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "Hello!"
    assert received[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in received)


def test_a_failure_in_the_middle_of_a_stream_becomes_an_error_event(
    team: Team,
    client: TestClient,
    openai_for: OpenAIFor,
    fine_tuned_model: str,
    fake_inference: FakeInference,
) -> None:
    fake_inference.fail_after = 1
    request = {"model": fine_tuned_model, "messages": HELLO, "stream": True}
    payloads = _sse_payloads(client, team.owner.headers, "/v1/chat/completions", request)
    assert "[DONE]" not in payloads
    assert assert_schema(json.loads(payloads[-1]), "ErrorResponse")["error"]["message"] == (
        "the model crashed"
    )
    with pytest.raises(openai.APIError, match="the model crashed"):
        list(
            openai_for(team.owner).chat.completions.create(
                model=fine_tuned_model, messages=HELLO, stream=True
            )
        )


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (
            inference_client.InferenceError(400, "the prompt is longer than the context"),
            400,
            "the prompt is longer than the context",
        ),
        (
            inference_client.InferenceError(
                422, [{"loc": ["body", "max_tokens"], "msg": "too large"}]
            ),
            400,
            "max_tokens: too large",
        ),
        (
            inference_client.InferenceError(504, "the inference server did not answer in time"),
            504,
            "the inference server did not answer in time",
        ),
    ],
)
def test_inference_errors_keep_their_status_and_explanation(
    team: Team,
    fine_tuned_model: str,
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    status: int,
    message: str,
) -> None:
    async def failing(*args: Any, **kwargs: Any) -> dict:
        raise raised

    monkeypatch.setattr(inference_client, "generate", failing)
    response = team.owner.post(
        "/v1/completions", json={"model": fine_tuned_model, "prompt": "once upon"}
    )
    error = assert_openai_error(response, status)
    assert error["message"] == message
    assert error["type"] == ("api_error" if status >= 500 else "invalid_request_error")


def test_completion_answers_and_streams_a_text_completion(
    team: Team,
    client: TestClient,
    openai_for: OpenAIFor,
    fine_tuned_model: str,
    fake_inference: FakeInference,
) -> None:
    oa = openai_for(team.owner)
    raw = oa.completions.with_raw_response.create(
        model=fine_tuned_model, prompt=["once upon"], max_tokens=4
    )
    body = raw_json(raw, "CreateCompletionResponse")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello!"
    assert fake_inference.calls[-1]["prompt"] == "once upon"
    assert fake_inference.calls[-1]["max_tokens"] == 4

    payloads = _sse_payloads(
        client,
        team.owner.headers,
        "/v1/completions",
        {"model": fine_tuned_model, "prompt": "once upon", "stream": True},
    )
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = oa.completions.create(model=fine_tuned_model, prompt="once upon", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "Hello!"

    # Several prompts: choice i*n+j is prompt i's j-th; usage counts each prompt once.
    response = team.owner.post(
        "/v1/completions", json={"model": fine_tuned_model, "prompt": [[7], [1, 2]], "n": 2}
    )
    body = assert_schema(response.json(), "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 10
    assert [c.get("prompt", c.get("prompt_ids")) for c in fake_inference.calls[-4:]] == [
        [7],
        [7],
        [1, 2],
        [1, 2],
    ]
    refusals = (([], "prompt"), ([[]], "prompt"), (["a", [1]], "prompt"), ("a", "suffix"))
    for prompt, param in refusals:
        response = team.owner.post(
            "/v1/completions",
            json={"model": fine_tuned_model, "prompt": prompt, "suffix": "x"}
            if param == "suffix"
            else {"model": fine_tuned_model, "prompt": prompt},
        )
        assert assert_openai_error(response, 400)["param"] == param


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    },
}
CALL_TEXT = ('<tool_call>{"name": "lookup", "arguments": {"q": "x"}}</tool_call>',)


def test_the_facade_sends_tools_grammars_bias_and_logprobs_to_the_inference_server(
    team: Team, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    named = {"type": "function", "function": {"name": "lookup"}}
    response = team.owner.post(
        "/v1/chat/completions",
        json={
            "model": fine_tuned_model,
            "messages": HELLO,
            "tools": [TOOL],
            "tool_choice": named,
            "logit_bias": {"17": -100},
            "logprobs": True,
            "top_logprobs": 2,
            "presence_penalty": 0.5,
            "user": "someone",
        },
    )
    assert response.status_code == 200, response.text
    call = fake_inference.calls[-1]
    assert call["tools"] == [TOOL]
    schema = call["response_format"]["json_schema"]
    assert schema["properties"]["name"] == {"const": "lookup"}
    assert schema["properties"]["arguments"] == TOOL["function"]["parameters"]
    assert (call["logit_bias"], call["logprobs"], call["top_logprobs"]) == ({17: -100.0}, True, 2)
    assert call["presence_penalty"] == 0.5

    team.owner.post(
        "/v1/chat/completions",
        json={
            "model": fine_tuned_model,
            "messages": HELLO,
            "tools": [TOOL],
            "tool_choice": "none",
            "response_format": {"type": "json_object"},
        },
    )
    call = fake_inference.calls[-1]
    assert "tools" not in call and call["response_format"] == {"type": "json_object"}


def test_an_auto_tool_call_is_read_back_whole_and_streamed(
    team: Team, client: TestClient, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    fake_inference.deltas = CALL_TEXT
    request = {"model": fine_tuned_model, "messages": HELLO, "tools": [TOOL]}
    body = assert_schema(
        team.owner.post("/v1/chat/completions", json=request).json(),
        "CreateChatCompletionResponse",
    )
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "x"}'}

    # Streamed: the tagged text is held back and comes out as one tool_calls delta.
    fake_inference.deltas = ("<tool", '_call>{"name": "lookup", ', '"arguments": {"q": "x"}}')
    payloads = _sse_payloads(
        client, team.owner.headers, "/v1/chat/completions", {**request, "stream": True}
    )
    chunks = [
        assert_schema(json.loads(p), "CreateChatCompletionStreamResponse") for p in payloads[:-1]
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any(d.get("content") for d in deltas)
    (calls,) = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "lookup"
    # (the fake's stream ends "length": a call cut short would not be one; this one is whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    # Plain words in auto mode stream as content once they cannot be a call.
    fake_inference.deltas = ("Sure", ", here", " it is")
    payloads = _sse_payloads(
        client, team.owner.headers, "/v1/chat/completions", {**request, "stream": True}
    )
    text = "".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
    assert text == "Sure, here it is"


def test_usage_reports_the_engines_cached_prompt_tokens_as_openai_does() -> None:
    """llama.cpp deployments say how many prompt tokens came from the prefix cache; the
    prompt is counted once for n choices (choice 0's figure), 0 where nothing reports it."""
    from app.openai.generation import usage

    cached = {"prompt_tokens": 10, "completion_tokens": 2, "cached_tokens": 9}
    fresh = {"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 0}
    both = usage(cached, fresh).model_dump()
    assert both == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 9},
    }
    assert_schema(both, "CompletionUsage")
    lanes = usage({"prompt_tokens": 4, "completion_tokens": 1})
    assert lanes.prompt_tokens_details.cached_tokens == 0
