"""Serving end to end: the web app in-process, the real inference process, tiny models.

Deploy with settings, scale, redeploy with zero failed requests, stop; the OpenAI facade's
greedy stream equals its whole answer, n/seed/stop behave, bad requests get OpenAI-shaped
4xx; a client that disconnects stops its generation; a classifier answers predict; and
deployments come back by themselves after the inference process restarts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_bounded_reads import _signed_in_page
from tests.conftest import Team
from tests.inference.test_inference_server import build_tiny_model
from tests.openai.conftest import OpenAIFor
from tests.openai.openai_schema import assert_openai_error
from tests.serving.conftest import (
    TOKEN_HEADER,
    RegisterVersion,
    build_tiny_classifier,
    inference_get,
    inference_process,
)

HELLO = [{"role": "user", "content": "the cat"}]


def wait_until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def deployment(team: Team, deployment_id: int) -> dict[str, Any]:
    response = team.owner.get(f"/api/v1/deployments/{deployment_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def deploy(team: Team, **body: Any) -> dict[str, Any]:
    created = team.owner.post("/api/v1/deployments", json=body)
    assert created.status_code == 202, created.text
    dep = created.json()
    wait_until(lambda: deployment(team, dep["id"])["status"] == "ready", "the deployment")
    return dict(dep)


def chat(team: Team, model: str, **params: Any) -> httpx.Response:
    return team.owner.post(
        "/v1/chat/completions", json={"model": model, "messages": HELLO, **params}
    )


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_a_deployment_serves_with_its_settings_scales_and_redeploys_with_zero_failed_requests(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    old = register_version()
    new = register_version(partial(build_tiny_model, seed=1))
    with inference_process(installation, serving_env):
        dep = deploy(
            team,
            model_version_id=old["id"],
            name="support-bot",
            max_batch_size=4,
            max_new_tokens=6,
            temperature=0,
        )
        assert dep["name"] == "support-bot"
        # No vLLM and no GPU here: "auto" (the default) serves with the transformers lanes.
        assert deployment(team, dep["id"])["backend"] == "transformers"
        listed = [m["id"] for m in team.viewer.get("/v1/models").json()["data"]]
        assert "support-bot" in listed and old["serving_name"] in listed
        assert team.viewer.get("/v1/models/support-bot").json()["id"] == "support-bot"
        assert dep["url"] == "http://127.0.0.1/v1"

        # The deployment's defaults apply: greedy, 6 new tokens; asking for more is a 400.
        first = chat(team, "support-bot")
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["completion_tokens"] == 6
        assert first.json()["choices"][0]["finish_reason"] == "length"
        too_long = assert_openai_error(chat(team, "support-bot", max_tokens=7), 400)
        assert too_long["param"] == "max_tokens"
        old_text = first.json()["choices"][0]["message"]["content"]

        # Scaling changes the lanes in place: no reload, the same model keeps answering.
        scaled = team.owner.client.patch(
            f"/api/v1/deployments/{dep['id']}", headers=team.owner.headers, json={"replicas": 2}
        )
        assert scaled.status_code == 200, scaled.text
        held = inference_get(serving_env, f"/models/mv-{old['id']}").json()
        assert (held["replicas"], held["max_batch_size"], held["status"]) == (2, 4, "ready")
        viewer_scale = team.viewer.client.patch(
            f"/api/v1/deployments/{dep['id']}", headers=team.viewer.headers, json={"replicas": 1}
        )
        assert viewer_scale.status_code == 403

        # Redeploy while a client keeps sending requests: none fails, the name switches over.
        statuses: list[int] = []
        texts: list[str] = []
        stop = threading.Event()

        def client_loop() -> None:
            while not stop.is_set():
                answer = chat(team, "support-bot")
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    texts.append(answer.json()["choices"][0]["message"]["content"])

        loop = threading.Thread(target=client_loop)
        loop.start()
        try:
            wait_until(lambda: len(statuses) >= 3, "requests before the redeploy")
            switch = team.owner.post(
                f"/api/v1/deployments/{dep['id']}/redeploy", json={"model_version_id": new["id"]}
            )
            assert switch.status_code == 202, switch.text
            assert switch.json()["model_version_id"] == old["id"]  # still the old one
            assert switch.json()["pending_model_version_id"] == new["id"]
            wait_until(
                lambda: deployment(team, dep["id"])["model_version_id"] == new["id"],
                "the switch to the new version",
            )
            settled = len(statuses)
            wait_until(lambda: len(statuses) >= settled + 3, "requests after the switch")
        finally:
            stop.set()
            loop.join(timeout=60)
        assert statuses and set(statuses) == {200}, statuses
        assert texts[0] == old_text and texts[-1] != old_text
        # The old version is unloaded after the drain delay; the new one serves alone.
        wait_until(
            lambda: (
                [m["name"] for m in inference_get(serving_env, "/models").json()]
                == [f"mv-{new['id']}"]
            ),
            "the old version to be unloaded",
        )

        # Monitoring: the deployment's figures and the web's Prometheus series.
        stats = deployment(team, dep["id"])["stats"]
        assert stats["requests"] >= 3 and stats["latency_p95_s"] >= stats["latency_p50_s"] > 0
        assert stats["tokens_per_s"] > 0 and stats["ttft_p50_s"] is not None
        exposed = team.owner.get("/metrics").text
        assert metric(
            exposed, "llmide_deployment_requests_total", deployment=str(dep["id"]), status="200"
        ) >= len(statuses)
        assert (
            metric(
                exposed, "llmide_deployment_requests_total", deployment=str(dep["id"]), status="400"
            )
            == 1
        )
        assert (
            f'llmide_deployment_time_to_first_token_seconds_bucket{{deployment="{dep["id"]}"'
            in exposed
        )
        assert "support-bot" not in exposed  # labels are ids: /metrics is server-wide
        assert metric(
            exposed, "llmide_deployment_completion_tokens_total", deployment=str(dep["id"])
        ) >= 6 * len(statuses)

        # The deployments page shows it with its figures and examples to copy; the
        # playground offers it by name (viewers see both, without the edit forms).
        page = _signed_in_page(team, "/deployments")
        assert "support-bot" in page and "req ·" in page and "tok/s" in page
        assert "curl http://127.0.0.1/v1/chat/completions" in page
        assert "from openai import OpenAI" in page and "/scale" not in page
        assert '<option value="support-bot"' in _signed_in_page(team, "/playground")

        stopped = team.owner.delete(f"/api/v1/deployments/{dep['id']}")
        assert stopped.json()["status"] == "stopped"
        assert inference_get(serving_env, "/models").json() == []
        assert assert_openai_error(chat(team, "support-bot"), 404)["param"] == "model"


def test_the_openai_facade_streams_what_it_answers_whole_and_honours_n_seed_and_stop(
    serving_env: int,
    installation: Path,
    team: Team,
    register_version: RegisterVersion,
    openai_for: OpenAIFor,
) -> None:
    version = register_version(partial(build_tiny_model, positions=1024))
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"], name="long", max_new_tokens=1000)
        oa = openai_for(team.owner)

        whole = oa.chat.completions.create(
            model="long", messages=HELLO, max_tokens=24, temperature=0
        )
        chunks = list(
            oa.chat.completions.create(
                model="long",
                messages=HELLO,
                max_tokens=24,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.model_dump() == whole.usage.model_dump()

        # n choices, reproducible with a seed; each choice differs (seed+index).
        def sampled() -> list[str]:
            answer = oa.chat.completions.create(
                model="long", messages=HELLO, max_tokens=8, temperature=1.0, n=3, seed=5
            )
            assert [c.index for c in answer.choices] == [0, 1, 2]
            assert answer.usage.completion_tokens == 24
            return [c.message.content for c in answer.choices]

        first = sampled()
        assert sampled() == first
        assert len(set(first)) > 1
        streamed_n = oa.completions.create(
            model="long", prompt="a dog", max_tokens=5, temperature=0, n=2, stream=True
        )
        per_choice: dict[int, str] = {0: "", 1: ""}
        for chunk in streamed_n:
            for choice in chunk.choices:
                per_choice[choice.index] += choice.text
        assert per_choice[0] == per_choice[1] != ""

        # A stop string cuts the answer (whole and streamed) and finishes with "stop".
        base = (
            oa.completions.create(model="long", prompt="the sun", max_tokens=16, temperature=0)
            .choices[0]
            .text
        )
        stop = base[3:5]
        expected = base[: base.find(stop)]
        cut = oa.completions.create(
            model="long", prompt="the sun", max_tokens=16, temperature=0, stop=[stop]
        ).choices[0]
        assert (cut.text, cut.finish_reason) == (expected, "stop")
        cut_stream = list(
            oa.completions.create(
                model="long",
                prompt="the sun",
                max_tokens=16,
                temperature=0,
                stop=[stop],
                stream=True,
            )
        )
        assert "".join(c.choices[0].text for c in cut_stream) == expected

        # Bad requests: OpenAI-shaped 4xx naming the problem.
        negative = chat(team, "long", max_tokens=-1)
        assert assert_openai_error(negative, 400)["param"] == "max_tokens"
        oversized = team.owner.post(
            "/v1/completions",
            json={"model": "long", "prompt": "the cat sat on the mat " * 300, "max_tokens": 10},
        )
        assert "maximum context length" in assert_openai_error(oversized, 400)["message"]
        assert assert_openai_error(chat(team, "nobody-here"), 404)["param"] == "model"
        bad_n = chat(team, "long", n=0)
        assert assert_openai_error(bad_n, 400)["param"] == "n"

        # A client that goes away mid-stream stops its generation (counted, not timed).
        from app.core.settings import get_settings

        key = f"mv-{version['id']}"
        before = inference_get(serving_env, "/metrics").text
        tokens_before = metric(before, "llmide_inference_tokens_generated_total", model=key)
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{serving_env}/generate",
            headers={TOKEN_HEADER: get_settings().internal_token},
            json={
                "name": key,
                "prompt": "the cat",
                "max_tokens": 900,
                "temperature": 0,
                "stream": True,
            },
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and "delta" in json.loads(line[6:]):
                    break
        after = wait_until(
            lambda: (
                (text := inference_get(serving_env, "/metrics").text)
                and metric(text, "llmide_inference_cancelled_total", model=key) == 1
                and text
            ),
            "the cancellation to be counted",
        )
        generated = metric(after, "llmide_inference_tokens_generated_total", model=key)
        assert generated - (tokens_before or 0) < 900
        assert deployment(team, dep["id"])["stats"]["cancelled"] == 1


def test_a_classifier_predicts_and_deployments_come_back_after_an_inference_restart(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.services import artifacts

    version = register_version(build_tiny_classifier)
    folder = artifacts.resolve(f"runs/{version['run_id']}/final")
    texts = ["the cat sat on the mat", "a dog"]
    with inference_process(installation, serving_env) as process:
        dep = deploy(team, model_version_id=version["id"])
        answer = team.viewer.post(
            f"/api/v1/deployments/{dep['id']}/predict", json={"inputs": texts}
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            probs = torch.softmax(
                model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1
            )
        for prediction, row in zip(predictions, probs.tolist(), strict=True):
            assert set(prediction["scores"]) == {"negative", "positive"}
            assert prediction["scores"]["negative"] == pytest.approx(row[0], abs=1e-5)
            assert prediction["label"] == ("positive" if row[1] > row[0] else "negative")
            assert prediction["score"] == max(prediction["scores"].values())

        empty = team.owner.post(f"/api/v1/deployments/{dep['id']}/predict", json={"inputs": []})
        assert empty.status_code == 400
        generation = chat(team, version["serving_name"])
        assert "use /predict" in assert_openai_error(generation, 400)["message"]
        process.kill()
        process.wait()

    with inference_process(installation, serving_env):
        # Nobody calls the web: its reconciler notices the empty server and loads it again.
        wait_until(
            lambda: (
                [(m["name"], m["status"]) for m in inference_get(serving_env, "/models").json()]
                == [(f"mv-{version['id']}", "ready")]
            ),
            "the deployment to be re-loaded by the reconciler",
        )
        assert deployment(team, dep["id"])["status"] == "ready"
        again = team.viewer.post(
            f"/api/v1/deployments/{dep['id']}/predict", json={"inputs": "a dog"}
        )
        assert again.json()["predictions"][0]["scores"]["negative"] == pytest.approx(
            predictions[1]["scores"]["negative"], abs=1e-5
        )


def test_asking_for_vllm_without_it_fails_the_deployment_with_the_reason(
    serving_env: int,
    installation: Path,
    team: Team,
    register_version: RegisterVersion,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = register_version()
    # The inference process reads it; this machine has neither vLLM nor a GPU.
    monkeypatch.setenv("LLMIDE_INFERENCE_BACKEND", "vllm")
    with inference_process(installation, serving_env):
        created = team.owner.post("/api/v1/deployments", json={"model_version_id": version["id"]})
        assert created.status_code == 202, created.text
        dep_id = created.json()["id"]
        failed = wait_until(
            lambda: (d := deployment(team, dep_id))["status"] == "failed" and d,
            "the deployment to fail",
        )
        assert "LLMIDE_INFERENCE_BACKEND=vllm" in failed["error"]
        assert "vLLM is not installed" in failed["error"]
        assert failed["backend"] is None
        page = _signed_in_page(team, "/deployments")
        assert "vLLM is not installed" in page
        refused = chat(team, version["serving_name"])
        assert refused.status_code == 424, refused.text  # failed for good: no retry-later


def test_default_settings_answer_every_turn_of_a_chat_that_outgrows_the_context(
    serving_env: int, installation: Path, team: Team, register_version: RegisterVersion
) -> None:
    """The newcomer's path: deploy with every default, then chat in the Playground. The tiny
    model has a 64-token context: the deployment answers at most half of it, and a history
    that no longer fits loses its oldest turns (with a count to show) instead of a 400."""
    from tests.conftest import PASSWORD

    version = register_version()
    with inference_process(installation, serving_env):
        dep = deploy(team, model_version_id=version["id"], temperature=0)
        assert deployment(team, dep["id"])["max_new_tokens"] == 32  # half of 64, not 256
        # The OpenAI facade without max_tokens: what fits after the prompt, never a 400.
        answer = chat(team, dep["name"])
        assert answer.status_code == 200, answer.text
        assert 1 <= answer.json()["usage"]["completion_tokens"] <= 32

        client = team.owner.client
        client.cookies.clear()
        login = client.post(
            "/api/v1/session", json={"email": team.owner.email, "password": PASSWORD}
        )
        browser = {"X-CSRF-Token": login.json()["csrf_token"], "Accept": "text/event-stream"}
        turn = "the cat sat on the mat and looked at the bird"
        history: list[dict[str, str]] = []
        finals = []
        for _ in range(4):
            history.append({"role": "user", "content": turn})
            with client.stream(
                "POST",
                "/playground/stream",
                json={"model": dep["name"], "messages": history, "temperature": 0},
                headers=browser,
            ) as response:
                assert response.status_code == 200
                events = [
                    json.loads(line[6:])
                    for line in response.iter_lines()
                    if line.startswith("data: ") and line != "data: [DONE]"
                ]
            assert not [e for e in events if "error" in e], events
            final = events[-1]
            finals.append(final)
            history.append(
                {"role": "assistant", "content": "".join(e.get("delta", "") for e in events)}
            )
        client.cookies.clear()
    assert all(f["completion_tokens"] >= 1 for f in finals)
    assert finals[0]["trimmed_messages"] == 0
    assert finals[-1]["trimmed_messages"] >= 1
