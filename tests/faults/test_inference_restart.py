"""The inference process killed with SIGKILL while completions are in flight: clients get a clear,
retryable 503 (OpenAI's error shape) instead of a hang or a 500, the supervisor starts inference
again, and the next request loads the model on demand and succeeds.

Nothing here races the machine's speed: the process is frozen (SIGSTOP) as soon as the stream's
headers arrive, which the web sends only once the first token is out, with hundreds of tokens
still to generate; the queued requests are killed only once the frozen server holds them; time
bounds are minutes, far above any loaded runner, yet far below the web's 600 s upstream timeout
that a hang would wait for."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import SENTENCES
from tests.e2e.test_worker_crash import children, cmdline
from tests.faults.support import api_client, wait_for

pytestmark = pytest.mark.e2e

# scratch-tiny's whole context: the longest answer a scratch model gives, ~1,000 tokens that take
# hundreds of times longer to generate than freezing the process takes (see the freeze below).
BLOCK_SIZE = 1024
MAX_TOKENS = BLOCK_SIZE - 32  # with the chat prompt, within the model's positions
QUESTION = [{"role": "user", "content": "the cat"}]
# Bounds for what takes well under a second on a quiet machine; a hang would last 600 s (the
# web's read timeout on the inference server), so "within a minute" still tells the two apart.
PROMPTLY_S = 60
CLIENT_TIMEOUT_S = 2 * PROMPTLY_S  # the client gives up after the bound, never before it


def long_documents(rows: int) -> bytes:
    """Documents longer than a training block: the model never sees a text end, so greedy
    answers run to max_tokens."""
    return "".join(
        json.dumps({"text": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(400))})
        + "\n"
        for i in range(rows)
    ).encode()


def inference_pid(server: Server) -> int | None:
    found = [p for p in children(server.process.pid) if "workers.inference" in cmdline(p)]
    return found[0] if len(found) == 1 else None


def yield_the_cpu(pid: int) -> None:
    """Every thread of `pid` at the lowest CPU priority (nice 19; Linux keeps niceness per
    thread): on a busy machine the web and this test then react well before it generates much
    more; on an idle one nothing changes."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), 19)


def requests_waiting_at(port: int) -> int:
    """Connections to `port` on this host with request bytes its process has not read yet.

    A frozen server cannot read, but the kernel still accepts connections for it and buffers
    what they send: each request waiting on it shows here as an unread receive queue.
    """
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            unread = int(fields[4].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and unread > 0:  # 01: established
                waiting += 1
    return waiting


def chat(server: Server, token: str, model: str, **params: object) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": model, "messages": QUESTION, "temperature": 0, **params},
        timeout=CLIENT_TIMEOUT_S,
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
        dataset = api.post("/api/v1/datasets", files={"file": ("d.jsonl", long_documents(10))})
        run_id = api.post(
            "/api/v1/runs",
            json={
                "dataset_id": dataset.json()["id"],
                "base_model": "scratch-tiny",
                "config": {
                    "max_steps": 30,
                    "batch_size": 1,
                    "block_size": BLOCK_SIZE,
                    "learning_rate": 3e-3,
                },
            },
        ).json()["id"]
        wait_for(
            lambda: api.get(f"/api/v1/runs/{run_id}").json()["status"] == "succeeded",
            timeout=600,
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
            timeout=300,
            what="the deployment to be ready",
            log=server.log_tail,
        )

        # Precondition: a greedy answer cannot end early; it runs to max_tokens, so the stream
        # below is cut with hundreds of tokens still to come.
        started = time.monotonic()
        whole = chat(server, token, model, max_tokens=MAX_TOKENS)
        took = time.monotonic() - started
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["finish_reason"] == "length", whole.json()
        print(f"a {MAX_TOKENS}-token answer took {took:.2f} s")

        killed = inference_pid(server)
        assert killed is not None, server.log_tail()
        yield_the_cpu(killed)
        client = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=token, max_retries=0, timeout=CLIENT_TIMEOUT_S
        )
        stream = iter(
            client.chat.completions.create(
                model=model, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0, stream=True
            )
        )
        # The web answers a stream only once the first token is out; frozen the moment that
        # answer arrives, the process has nearly all MAX_TOKENS tokens left to generate, however
        # loaded the machine (the freeze takes a sliver of the time they take).
        os.kill(killed, signal.SIGSTOP)
        # The web held the first token before it answered: it comes without the frozen process.
        next(c for c in stream if c.choices and c.choices[0].delta.content)
        inference_port = int(server.env["LLMIDE_INFERENCE_PORT"])
        # The web's periodic reconcile may be waiting on the frozen server too; nothing it holds
        # is read, so what waits only grows until the kill.
        waiting_before = requests_waiting_at(inference_port)
        with ThreadPoolExecutor(max_workers=3) as pool:
            # Waiting on the frozen inference server when it dies.
            queued = [pool.submit(chat, server, token, model, max_tokens=8) for _ in range(3)]
            wait_for(
                lambda: requests_waiting_at(inference_port) >= waiting_before + len(queued),
                timeout=PROMPTLY_S,
                what="the queued requests to wait on the frozen inference server",
                log=server.log_tail,
            )
            os.kill(killed, signal.SIGKILL)
            killed_at = time.monotonic()

            relayed = 0
            with pytest.raises(openai.APIError) as stream_error:
                for chunk in stream:
                    relayed += bool(chunk.choices and chunk.choices[0].delta.content)
            ended_after = time.monotonic() - killed_at
            print(f"the stream ended {ended_after:.2f} s after the kill, {relayed} deltas later")
            assert ended_after < PROMPTLY_S, "the stream ended promptly, not at a timeout"
            assert "retry" in stream_error.value.message
            assert stream_error.value.body["type"] == "service_unavailable_error"

            # Sent while no inference process listens (the supervisor waits before restarting).
            assert_retryable(chat(server, token, model, max_tokens=8))
            for future in queued:
                assert_retryable(future.result(timeout=CLIENT_TIMEOUT_S))

        # The supervisor starts a new inference process; it holds no model, and the next
        # request loads it again from the version's path.
        wait_for(
            lambda: inference_pid(server) not in (None, killed),
            timeout=120,
            what="the supervisor to restart inference",
            log=server.log_tail,
        )
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers.append(chat(server, token, model, max_tokens=8))
            return answers[-1].status_code == 200

        wait_for(answered, timeout=300, what="a completion after the restart", log=server.log_tail)
        for refused in answers[:-1]:  # the new process may still have been starting
            assert_retryable(refused)
        assert answers[-1].json()["choices"][0]["message"]["content"]
        assert api.get(deployment_url).json()["status"] == "ready"
        api.close()
