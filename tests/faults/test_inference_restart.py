"""The inference process killed with SIGKILL while completions are in flight: clients get a clear,
retryable 503 (OpenAI's error shape) instead of a hang or a 500, the supervisor starts inference
again, and the next request loads the model on demand and succeeds."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import SENTENCES
from tests.e2e.test_worker_crash import children, cmdline
from tests.faults.support import api_client, wait_for

pytestmark = pytest.mark.e2e

BLOCK_SIZE = 256
MAX_TOKENS = 220  # with the chat prompt, within the model's 256 positions
QUESTION = [{"role": "user", "content": "the cat"}]


def long_documents(rows: int) -> bytes:
    """Long documents: the model learns that text goes on, so greedy answers run to max_tokens."""
    return "".join(
        json.dumps({"text": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(40))})
        + "\n"
        for i in range(rows)
    ).encode()


def inference_pid(server: Server) -> int | None:
    found = [p for p in children(server.process.pid) if "workers.inference" in cmdline(p)]
    return found[0] if len(found) == 1 else None


def chat(server: Server, token: str, model: str, **params: object) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": model, "messages": QUESTION, "temperature": 0, **params},
        timeout=90,
    )


def assert_retryable(response: httpx.Response) -> None:
    """503 in OpenAI's error shape, telling the client to retry."""
    assert response.status_code == 503, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "service_unavailable_error"
    assert "retry" in error["message"]


def test_killing_inference_mid_request_gives_retryable_503s_and_the_next_request_succeeds(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path / "data") as server:
        api = api_client(server.env, server.base_url)
        token = api.headers["Authorization"].removeprefix("Bearer ")
        dataset = api.post("/api/v1/datasets", files={"file": ("d.jsonl", long_documents(60))})
        run_id = api.post(
            "/api/v1/runs",
            json={
                "dataset_id": dataset.json()["id"],
                "base_model": "scratch-nano",
                "config": {"max_steps": 30, "block_size": BLOCK_SIZE, "learning_rate": 3e-3},
            },
        ).json()["id"]
        wait_for(
            lambda: api.get(f"/api/v1/runs/{run_id}").json()["status"] == "succeeded",
            timeout=180,
            what="the run to succeed",
            log=server.log_tail,
        )
        version = api.get("/api/v1/models").json()[0]["versions"][0]
        model = version["serving_name"]
        deployment = api.post(
            "/api/v1/deployments",
            # Above the default limit (half the context): the answer must run long enough for
            # the kill below to land mid-stream.
            json={"model_version_id": version["id"], "max_new_tokens": MAX_TOKENS},
        )
        assert deployment.status_code == 202, deployment.text
        deployment_url = f"/api/v1/deployments/{deployment.json()['id']}"
        wait_for(
            lambda: api.get(deployment_url).json()["status"] == "ready",
            timeout=120,
            what="the deployment to be ready",
            log=server.log_tail,
        )

        # Precondition: a greedy answer runs to max_tokens and takes a while, so the kill below
        # lands while the stream is still being generated.
        started = time.monotonic()
        whole = chat(server, token, model, max_tokens=MAX_TOKENS)
        took = time.monotonic() - started
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["finish_reason"] == "length", whole.json()
        print(f"a {MAX_TOKENS}-token answer took {took:.2f} s")

        client = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=token, max_retries=0, timeout=60
        )
        stream = iter(
            client.chat.completions.create(
                model=model, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0, stream=True
            )
        )
        next(c for c in stream if c.choices and c.choices[0].delta.content)
        # Frozen mid-answer, then killed: the stream is certain to be cut (a whole answer can
        # take a quarter of a second, less than it takes to queue the requests below).
        killed = inference_pid(server)
        assert killed is not None, server.log_tail()
        os.kill(killed, signal.SIGSTOP)
        with ThreadPoolExecutor(max_workers=3) as pool:
            # Waiting on the frozen inference server when it dies.
            queued = [pool.submit(chat, server, token, model, max_tokens=8) for _ in range(3)]
            time.sleep(0.3)
            os.kill(killed, signal.SIGKILL)
            killed_at = time.monotonic()

            with pytest.raises(openai.APIError) as stream_error:
                for _ in stream:
                    pass
            assert time.monotonic() - killed_at < 10, "the stream ended promptly"
            assert "retry" in stream_error.value.message
            assert stream_error.value.body["type"] == "service_unavailable_error"

            # Sent while no inference process listens.
            assert_retryable(chat(server, token, model, max_tokens=8))
            for future in queued:
                assert_retryable(future.result(timeout=30))

        # The supervisor starts a new inference process; it holds no model, and the next
        # request loads it again from the version's path.
        wait_for(
            lambda: inference_pid(server) not in (None, killed),
            timeout=60,
            what="the supervisor to restart inference",
            log=server.log_tail,
        )
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers.append(chat(server, token, model, max_tokens=8))
            return answers[-1].status_code == 200

        wait_for(answered, timeout=120, what="a completion after the restart", log=server.log_tail)
        for refused in answers[:-1]:  # the new process may still have been starting
            assert_retryable(refused)
        assert answers[-1].json()["choices"][0]["message"]["content"]
        assert api.get(deployment_url).json()["status"] == "ready"
        api.close()
