"""OpenAI `batches`: batch input files, create/retrieve/list/cancel, and a batch run by the
worker's own code (app.openai.batch_runner, what the Celery task calls) into output and error
files. The inference server's client answers with a fake here (the engines are covered by
tests/serving/test_batches_serving.py); everything on this side of it is real.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timedelta
from typing import Any

import openai
import pytest
from sqlalchemy import update

from app.services.serving import inference_client
from tests.conftest import Team
from tests.openai.conftest import OpenAIFor, raw_json
from tests.openai.openai_schema import assert_openai_error, assert_schema

CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _both_databases(backend: str) -> None:
    """Every test here runs on SQLite and on Postgres."""


class FakeInference:
    def __init__(self) -> None:
        self.calls = 0
        self.on_call: Any = None

    async def generate(self, name: str, path: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return {
            "text": "an answer",
            "finish_reason": "stop",
            "prompt_tokens": 4,
            "completion_tokens": 2,
        }

    async def embed(self, name: str, path: str, inputs: list) -> dict[str, Any]:
        self.calls += 1
        return {"embeddings": [[0.6, 0.8] for _ in inputs], "prompt_tokens": 3 * len(inputs)}


@pytest.fixture
def fake_inference(monkeypatch: pytest.MonkeyPatch) -> FakeInference:
    fake = FakeInference()
    monkeypatch.setattr(inference_client, "generate", fake.generate)
    monkeypatch.setattr(inference_client, "embed", fake.embed)
    return fake


def _line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def _upload(oa: openai.OpenAI, lines: list[str]) -> str:
    content = ("\n".join(lines) + "\n").encode()
    created = oa.files.with_raw_response.create(
        file=("requests.jsonl", io.BytesIO(content)), purpose="batch"
    )
    file = raw_json(created, "OpenAIFile")
    assert file["purpose"] == "batch" and file["bytes"] == len(content)
    return str(file["id"])


def _run_worker(batch_id: str) -> str:
    from app.openai import batch_runner

    return asyncio.run(batch_runner.run(int(batch_id.removeprefix("batch_"))))


def _jsonl(oa: openai.OpenAI, file_id: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(x) for x in oa.files.content(file_id).read().decode().splitlines()]
    return {row["custom_id"]: row for row in rows}


def test_a_chat_batch_runs_every_line_into_the_output_and_error_files(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    oa = openai_for(team.owner)
    hello = [{"role": "user", "content": "hello"}]
    input_id = _upload(
        oa,
        [
            _line("a", {"model": fine_tuned_model, "messages": hello, "max_tokens": 5}),
            _line("b", {"model": fine_tuned_model, "messages": hello}),
            _line("missing", {"model": "no-such-model", "messages": hello}),
            _line("bad", {"model": fine_tuned_model, "messages": []}),
        ],
    )

    batch = oa.batches.create(
        input_file_id=input_id, endpoint=CHAT, completion_window="24h", metadata={"purpose": "eval"}
    )
    assert batch.id.startswith("batch_")
    assert (batch.status, batch.input_file_id, batch.endpoint) == ("validating", input_id, CHAT)
    assert batch.request_counts.total == 4
    assert batch.metadata == {"purpose": "eval"}
    assert [b.id for b in oa.batches.list()] == [batch.id]

    assert _run_worker(batch.id) == "completed"
    done = oa.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert done.output_file_id and done.error_file_id

    output = _jsonl(oa, done.output_file_id)
    assert set(output) == {"a", "b"}
    for row in output.values():
        assert row["id"].startswith("batch_req_") and row["error"] is None
        assert row["response"]["status_code"] == 200
        body = assert_schema(row["response"]["body"], "CreateChatCompletionResponse")
        assert body["choices"][0]["message"]["content"] == "an answer"
    errors = _jsonl(oa, done.error_file_id)
    assert errors["missing"]["response"]["status_code"] == 404
    assert errors["missing"]["response"]["body"]["error"]["param"] == "model"
    assert errors["bad"]["response"]["status_code"] == 400
    assert fake_inference.calls == 2

    output_file = oa.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    assert {f.id for f in oa.files.list(purpose="batch_output")} == {
        done.output_file_id,
        done.error_file_id,
    }
    assert_schema(team.owner.get("/v1/files?purpose=batch").json(), "ListFilesResponse")
    # Unfiltered, the list holds every file, training and batch ones, newest first.
    everything = assert_schema(team.owner.get("/v1/files").json(), "ListFilesResponse")
    listed = [f["id"] for f in everything["data"]]
    assert {input_id, done.output_file_id, done.error_file_id} <= set(listed)
    assert listed.index(done.output_file_id) < listed.index(input_id)
    second = team.owner.get("/v1/files", params={"limit": 1, "after": listed[0]}).json()
    assert [f["id"] for f in second["data"]] == listed[1:2]


def test_completions_and_embeddings_lines_answer_in_their_endpoints_shape(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    oa = openai_for(team.owner)
    completions = oa.batches.create(
        input_file_id=_upload(
            oa, [_line("c", {"model": fine_tuned_model, "prompt": "Once"}, "/v1/completions")]
        ),
        endpoint="/v1/completions",
        completion_window="24h",
    )
    embeddings = oa.batches.create(
        input_file_id=_upload(
            oa, [_line("e", {"model": fine_tuned_model, "input": ["x", "y"]}, "/v1/embeddings")]
        ),
        endpoint="/v1/embeddings",
        completion_window="24h",
    )
    assert _run_worker(completions.id) == _run_worker(embeddings.id) == "completed"

    text = _jsonl(oa, oa.batches.retrieve(completions.id).output_file_id or "")["c"]
    assert_schema(text["response"]["body"], "CreateCompletionResponse")
    assert text["response"]["body"]["choices"][0]["text"] == "an answer"
    vectors = _jsonl(oa, oa.batches.retrieve(embeddings.id).output_file_id or "")["e"]
    body = vectors["response"]["body"]
    assert [d["embedding"] for d in body["data"]] == [[0.6, 0.8], [0.6, 0.8]]
    assert body["usage"]["prompt_tokens"] == 6
    assert oa.batches.retrieve(embeddings.id).error_file_id is None  # nothing failed


def test_an_invalid_input_file_gives_a_failed_batch_listing_each_bad_line(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    input_id = _upload(
        oa,
        [
            _line("ok", body),
            "not json",
            _line("ok", body),
            _line("other", body, "/v1/embeddings"),
            json.dumps({"custom_id": "get", "method": "GET", "url": CHAT, "body": body}),
            _line("stream", {**body, "stream": True}),
        ],
    )
    raw = oa.batches.with_raw_response.create(
        input_file_id=input_id, endpoint=CHAT, completion_window="24h"
    )
    batch = raw.http_response.json()
    assert batch["status"] == "failed" and batch["failed_at"]
    problems = {e["line"]: e["code"] for e in batch["errors"]["data"]}
    assert problems == {
        2: "invalid_json_line",
        3: "duplicate_custom_id",
        4: "mismatched_url",
        5: "invalid_method",
        6: "invalid_request",
    }
    assert _run_worker(batch["id"]) == "skipped"


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"endpoint": "/v1/responses"}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"input_file_id": "file-raw-999999"}, 404, "input_file_id"),
        ({"input_file_id": "file-1"}, 404, "input_file_id"),
        ({"surprise": 1}, 400, "surprise"),
    ],
)
def test_bad_batch_requests_are_refused_naming_the_parameter(
    team: Team, openai_for: OpenAIFor, fields: dict, status: int, param: str
) -> None:
    input_id = _upload(openai_for(team.owner), [_line("a", {"model": "m", "messages": []})])
    body = {"input_file_id": input_id, "endpoint": CHAT, "completion_window": "24h", **fields}
    error = assert_openai_error(team.owner.post("/v1/batches", json=body), status)
    assert error["param"] == param
    assert team.owner.get("/v1/batches").json()["data"] == []


def _five_hellos(oa: openai.OpenAI, model: str) -> str:
    """An uploaded batch input of five chat requests, custom ids r0 to r4."""
    hello = [{"role": "user", "content": "hello"}]
    return _upload(oa, [_line(f"r{i}", {"model": model, "messages": hello}) for i in range(5)])


def test_cancel_ends_a_waiting_batch_at_once_and_stops_a_running_one_between_requests(
    team: Team,
    openai_for: OpenAIFor,
    fine_tuned_model: str,
    fake_inference: FakeInference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.openai import batch_runner

    oa = openai_for(team.editor)
    input_id = _five_hellos(oa, fine_tuned_model)
    waiting = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    cancelled = oa.batches.cancel(waiting.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    assert _run_worker(waiting.id) == "skipped"
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(waiting.id)

    running = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    monkeypatch.setattr(batch_runner, "CONCURRENCY", 1)
    # The cancel arrives while the first request is with the model.
    fake_inference.on_call = lambda: (
        None if fake_inference.calls > 1 else team.editor.post(f"/v1/batches/{running.id}/cancel")
    )
    assert _run_worker(running.id) == "cancelled"
    ended = oa.batches.retrieve(running.id)
    assert ended.status == "cancelled" and ended.cancelling_at and ended.cancelled_at
    assert ended.request_counts.completed == 1
    assert set(_jsonl(oa, ended.output_file_id or "")) == {"r0"}
    skipped = _jsonl(oa, ended.error_file_id or "")
    assert set(skipped) == {"r1", "r2", "r3", "r4"}
    assert skipped["r1"]["error"]["code"] == "batch_cancelled"


def _set_expires_at(batch_id: str, when: datetime) -> None:
    """Move a batch's end of window (24 h after creation) to `when`, as if the time had come."""
    from app.db.models import Batch
    from app.db.session import session_scope

    with session_scope() as session:
        number = int(batch_id.removeprefix("batch_"))
        session.execute(update(Batch).where(Batch.id == number).values(expires_at=when))


def _an_hour_ago() -> datetime:
    from app.db.base import utcnow

    return utcnow() - timedelta(hours=1)


def test_a_batch_past_its_expiry_reads_expired_and_keeps_its_finished_results(
    team: Team,
    openai_for: OpenAIFor,
    fine_tuned_model: str,
    fake_inference: FakeInference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.openai import batch_runner

    oa = openai_for(team.editor)
    input_id = _five_hellos(oa, fine_tuned_model)
    batch = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    assert batch.expires_at == batch.created_at + 24 * 3600
    monkeypatch.setattr(batch_runner, "CONCURRENCY", 1)
    # The window ends while the second request is with the model: it finishes, no more start.
    fake_inference.on_call = lambda: (
        _set_expires_at(batch.id, _an_hour_ago()) if fake_inference.calls == 2 else None
    )

    assert _run_worker(batch.id) == "expired"
    assert fake_inference.calls == 2
    ended = oa.batches.retrieve(batch.id)
    assert ended.status == "expired" and ended.expired_at and ended.in_progress_at
    assert ended.completed_at is None and ended.cancelled_at is None
    assert (ended.request_counts.total, ended.request_counts.completed) == (5, 2)
    output = _jsonl(oa, ended.output_file_id or "")
    assert set(output) == {"r0", "r1"}
    assert output["r1"]["response"]["body"]["choices"][0]["message"]["content"] == "an answer"
    unrun = _jsonl(oa, ended.error_file_id or "")
    assert set(unrun) == {"r2", "r3", "r4"}
    assert {row["error"]["code"] for row in unrun.values()} == {"batch_expired"}
    assert all(row["response"] is None for row in unrun.values())
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(batch.id)


def test_a_queued_batch_past_its_expiry_reads_expired_and_never_runs(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    oa = openai_for(team.owner)
    hello = [{"role": "user", "content": "hello"}]
    input_id = _upload(
        oa, [_line(f"r{i}", {"model": fine_tuned_model, "messages": hello}) for i in range(3)]
    )
    read = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    late = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    assert oa.batches.retrieve(read.id).status == "validating"
    deadline = _an_hour_ago()
    _set_expires_at(read.id, deadline)
    _set_expires_at(late.id, deadline)

    # Read (by a viewer, even) before any worker took it: expired as of its expires_at.
    expired = openai_for(team.viewer).batches.retrieve(read.id)
    assert expired.status == "expired" and expired.expired_at == expired.expires_at
    assert expired.in_progress_at is None and expired.output_file_id is None
    unrun = _jsonl(oa, expired.error_file_id or "")
    assert set(unrun) == {"r0", "r1", "r2"}
    assert {row["error"]["code"] for row in unrun.values()} == {"batch_expired"}
    assert _run_worker(read.id) == "skipped"

    # Picked up by the worker after its window, before anyone read it: nothing runs either.
    assert _run_worker(late.id) == "expired"
    listed = {b.id: b for b in oa.batches.list()}
    assert listed[late.id].status == "expired" and listed[late.id].error_file_id
    assert set(_jsonl(oa, listed[late.id].error_file_id or "")) == {"r0", "r1", "r2"}
    assert fake_inference.calls == 0
    # Ended, its input is no longer held.
    assert oa.files.delete(input_id).deleted is True


def test_batches_and_their_files_belong_to_their_workspace(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    input_id = _upload(oa, [_line("a", {"model": "m", "messages": []})])
    batch = oa.batches.create(input_file_id=input_id, endpoint=CHAT, completion_window="24h")
    outsider = openai_for(team.outsider)
    with pytest.raises(openai.NotFoundError):
        outsider.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        outsider.files.retrieve(input_id)
    assert outsider.batches.list().data == []
    with pytest.raises(openai.PermissionDeniedError):
        openai_for(team.viewer).batches.create(
            input_file_id=input_id, endpoint=CHAT, completion_window="24h"
        )
    assert openai_for(team.viewer).batches.retrieve(batch.id).id == batch.id
    # The input of a batch that has not ended cannot be deleted from under it.
    with pytest.raises(openai.ConflictError):
        oa.files.delete(input_id)
    oa.batches.cancel(batch.id)
    assert oa.files.delete(input_id).deleted is True


def test_the_dataset_page_generates_answers_for_every_prompt_into_a_new_version(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str, fake_inference: FakeInference
) -> None:
    from tests.openai.conftest import upload_file
    from tests.signed_in import HTML, sign_in

    file_id = upload_file(
        team.editor,
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"question {i}"},
                        {"role": "assistant", "content": "old answer"},
                    ]
                }
            )
            + "\n"
            for i in range(3)
        ),
    )
    dataset_id = int(file_id.removeprefix("file-"))
    source = team.editor.get(f"/api/v1/datasets/{dataset_id}").json()["version_id"]
    csrf = sign_in(team.editor)
    page = team.editor.client.get(f"/datasets/{dataset_id}/versions-panel", headers=HTML)
    assert "Generate answers" in page.text

    answer = team.editor.client.post(
        f"/datasets/{dataset_id}/versions/generate",
        data={
            "version_id": str(source),
            "model": fine_tuned_model,
            "max_tokens": "16",
            "endpoint": "/v1/chat/completions",
            "csrf_token": csrf,
        },
        headers=HTML,
    )
    assert answer.status_code == 200, answer.text[:500]
    assert "Answers are being generated" in answer.text
    versions = team.editor.get(f"/api/v1/datasets/{dataset_id}/versions").json()
    new = next(
        v
        for v in (versions if isinstance(versions, list) else versions["data"])
        if v["id"] != source
    )
    assert new["status"] == "preparing" and new["parent_id"] == source
    assert 'hx-trigger="every 1s"' in answer.text  # the table polls its progress

    (batch,) = openai_for(team.editor).batches.list().data
    assert batch.metadata == {"dataset_version": str(source)}
    assert _run_worker(batch.id) == "completed"

    ready = team.editor.get(f"/api/v1/datasets/{dataset_id}/versions/{new['id']}").json()
    assert ready["status"] == "ready" and ready["num_rows"] == 3
    assert ready["recipe"]["generate"]["model"] == fine_tuned_model
    rows = team.editor.get(f"/api/v1/datasets/{dataset_id}/rows", params={"version_id": new["id"]})
    if rows.status_code == 200:  # the rows API shows the generated answers
        assert "an answer" in rows.text and "old answer" not in rows.text

    bad = team.editor.client.post(
        f"/datasets/{dataset_id}/versions/generate",
        data={
            "version_id": str(source),
            "model": fine_tuned_model,
            "max_tokens": "0",
            "csrf_token": csrf,
        },
        headers=HTML,
    )
    assert bad.status_code == 200 and "max tokens must be" in bad.text
