"""The whole path with real processes: upload → train → live points → registry → deploy → chat."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets

from tests.e2e.processes import Server, running_server

pytestmark = pytest.mark.e2e

PASSWORD = "correct-horse-42"
SENTENCES = [
    "the cat sat on the mat and looked at the door",
    "a small dog ran across the green park",
    "the sun rose over the quiet town",
    "we read a book about the sea",
]


def corpus(rows: int) -> bytes:
    return "".join(
        json.dumps({"text": SENTENCES[i % len(SENTENCES)]}) + "\n" for i in range(rows)
    ).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("e2e") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    server.cli("user", "create", "ada@example.com", "--password", PASSWORD, "--admin")
    secret = server.cli("token", "create", "ada@example.com", "--name", "e2e").strip()
    assert secret.startswith("llmide_") and "\n" not in secret
    return secret


@pytest.fixture(scope="module")
def api(server: Server, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def wait_for(predicate: Any, *, timeout: float, what: str, server: Server) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n--- server log ---\n{server.log_tail()}")


async def collect_live_points(
    server: Server, token: str, run_id: int, stop_status: set[str]
) -> dict:
    url = server.base_url.replace("http://", "ws://") + f"/ws/runs/{run_id}"
    points: dict[int, dict] = {}
    statuses: list[str] = []
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=240))
            if message["type"] == "metrics":
                for point in message["points"]:
                    points.setdefault(point["step"], {}).update(point)
            elif message["type"] == "status":
                statuses.append(message["status"])
                if message["status"] in stop_status:
                    return {"points": points, "statuses": statuses}


def test_upload_train_watch_register_deploy_and_chat(
    server: Server, token: str, api: httpx.Client
) -> None:
    uploaded = api.post("/api/v1/datasets", files={"file": ("corpus.jsonl", corpus(400))})
    assert uploaded.status_code == 201, uploaded.text
    launched = api.post(
        "/api/v1/runs",
        json={
            "dataset_id": uploaded.json()["id"],
            "suffix": "e2e",
            "config": {"max_steps": 40, "batch_size": 8, "block_size": 32, "learning_rate": 3e-3},
        },
    )
    assert launched.status_code == 201, launched.text
    run_id = launched.json()["id"]

    live = asyncio.run(
        collect_live_points(server, token, run_id, {"succeeded", "failed", "cancelled"})
    )
    assert live["statuses"][-1] == "succeeded", server.log_tail()
    losses = [
        live["points"][s]["train_loss"]
        for s in sorted(live["points"])
        if "train_loss" in live["points"][s]
    ]
    assert len(losses) >= 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.8, losses
    assert any("eval_loss" in p for p in live["points"].values())

    # A browser reconnecting with the last step it saw gets exactly the missing points.
    history = api.get(f"/api/v1/runs/{run_id}/metrics", params={"after_step": 20}).json()
    assert [p["step"] for p in history] == sorted(s for s in live["points"] if s > 20)

    run = api.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["step"] == 40
    checkpoints = api.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    assert checkpoints and checkpoints[-1]["is_final"]

    models = api.get("/api/v1/models").json()
    version = models[0]["versions"][0]
    assert version["run_id"] == run_id and version["lineage"]["dataset_id"] == uploaded.json()["id"]
    final_dir = Path(server.env["LLMIDE_DATA_DIR"]) / "artifacts" / "runs" / str(run_id) / "final"
    assert (final_dir / "model.safetensors").exists() and not (
        final_dir / "pytorch_model.bin"
    ).exists()

    deployed = api.post("/api/v1/deployments", json={"model_version_id": version["id"]})
    assert deployed.status_code == 202, deployed.text
    wait_for(
        lambda: api.get(f"/api/v1/deployments/{deployed.json()['id']}").json()["status"] == "ready",
        timeout=120,
        what="deployment ready",
        server=server,
    )

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=token, max_retries=0)
    assert version["serving_name"] in {m.id for m in client.models.list()}
    chat = client.chat.completions.create(
        model=version["serving_name"],
        messages=[{"role": "user", "content": "the cat"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    completion = client.completions.create(
        model=version["serving_name"], prompt="the cat sat", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text
    # Greedy, so the stream must add up to the whole answer above (sampled at the deployment's
    # temperature, a 40-step model's first token may be its end token: an empty stream).
    streamed = client.chat.completions.create(
        model=version["serving_name"],
        messages=[{"role": "user", "content": "the cat"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    deltas = [
        c.choices[0].delta.content for c in streamed if c.choices and c.choices[0].delta.content
    ]
    assert deltas and "".join(deltas) == chat.choices[0].message.content

    # Two web processes served those three requests; every scrape, whichever process answers
    # it (a fresh connection each), counts all three.
    counted = re.compile(
        rf'^llmide_deployment_requests_total{{deployment="{deployed.json()["id"]}",'
        r'status="200"} ([0-9.]+)$',
        re.MULTILINE,
    )
    for _ in range(6):
        exposed = httpx.get(server.base_url + "/metrics", headers=api.headers, timeout=30).text
        assert [float(v) for v in counted.findall(exposed)] == [3.0], exposed[:2000]


def test_cancel_stops_a_running_job_and_keeps_its_history(
    server: Server, token: str, api: httpx.Client
) -> None:
    uploaded = api.post("/api/v1/datasets", files={"file": ("long.jsonl", corpus(800))})
    run_id = api.post(
        "/api/v1/runs",
        json={"dataset_id": uploaded.json()["id"], "config": {"max_steps": 5000, "block_size": 32}},
    ).json()["id"]
    wait_for(
        lambda: api.get(f"/api/v1/runs/{run_id}").json()["step"] >= 3,
        timeout=180,
        what="run to make progress",
        server=server,
    )
    cancelled_at = time.monotonic()
    assert api.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200
    run = wait_for(
        lambda: (r := api.get(f"/api/v1/runs/{run_id}").json())["status"] == "cancelled" and r,
        timeout=60,
        what="run cancelled",
        server=server,
    )
    assert time.monotonic() - cancelled_at < 15
    assert run["step"] < 5000
    assert len(api.get(f"/api/v1/runs/{run_id}/metrics").json()) >= 3


def test_a_prepared_dataset_version_is_made_by_the_cpu_worker(
    server: Server, api: httpx.Client
) -> None:
    rows = ["<b>the cat sat</b>", "the cat sat", "你好，世界", "a dog ran", "a dog ran"] * 4
    content = "".join(
        json.dumps({"text": f"{text} {i // 5}"}) + "\n" for i, text in enumerate(rows)
    ).encode()
    uploaded = api.post("/api/v1/datasets", files={"file": ("prep.jsonl", content)})
    assert uploaded.status_code == 201, uploaded.text
    dataset_id, parent = uploaded.json()["id"], uploaded.json()["version_id"]
    recipe = {
        "steps": [{"step": "strip_html"}, {"step": "exact_dedup"}],
        "split": {"validation": 0.25, "seed": 1},
    }
    queued = api.post(
        f"/api/v1/datasets/{dataset_id}/versions",
        json={"parent_version_id": parent, "recipe": recipe},
    )
    assert queued.status_code == 202, queued.text
    url = f"/api/v1/datasets/{dataset_id}/versions/{queued.json()['id']}"
    version = wait_for(
        lambda: (v := api.get(url).json())["status"] != "preparing" and v,
        timeout=120,
        what="the prepared version",
        server=server,
    )
    assert version["status"] == "ready", version
    assert version["report"]["rows_in"] == 20 and version["num_rows"] == 12
    assert [s["removed"] for s in version["report"]["steps"]] == [0, 8]
    assert version["report"]["split"] == {"train": 9, "validation": 3, "test": 0}


def readme_quick_start() -> str:
    """The README's OpenAI quick-start, as a person copies it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The REST API and OpenAI clients", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_openai_quick_start_runs_as_written(
    server: Server, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the address, the key and the README's "..." wait are filled in; every default
    (max_tokens included) is the README's, which used to end in a context-length 400."""
    code = readme_quick_start()
    assert 'base_url="http://127.0.0.1:8000/v1"' in code and 'api_key="llmide_..."' in code
    wait = '# ... when job.status == "succeeded":\n'
    assert wait in code
    code = (
        code.replace("http://127.0.0.1:8000", server.base_url)
        .replace("llmide_...", token)
        .replace(
            wait,
            "import time\n"
            "while (s := client.fine_tuning.jobs.retrieve(job.id).status) not in (\n"
            '    "succeeded", "failed", "cancelled"):\n'
            "    time.sleep(1)\n"
            'assert s == "succeeded", client.fine_tuning.jobs.retrieve(job.id)\n',
        )
    )
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("Hello", "Hello! How can I help?"), ("Hi there", "Hi! What do you need?")]
    ] * 12
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    reply = namespace["reply"]
    # Sampled as the README has it (no temperature): a briefly tuned model may answer its end
    # token first, an empty but complete answer; what matters is a whole chat completion.
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str), server.log_tail()
    assert choice.finish_reason in ("stop", "length"), server.log_tail()
    assert reply.usage.completion_tokens > 0
