"""Dataset ingest: every format (also gzip) to canonical rows, schema detection, numbered
problems, keep_valid with a downloadable rejected file, limits, duplicates, preview search,
versions recorded by runs."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.core.settings import get_settings
from tests.conftest import Persona, Team, text_jsonl

QA = [
    {"question": "What is 2+2?", "answer": "4"},
    {"question": "中国的首都是哪里？", "answer": "北京"},
    {"question": "Say hi, politely", "answer": 'Hello, "friend".'},
]
CANONICAL_QA = [{"prompt": r["question"], "completion": r["answer"]} for r in QA]


def _csv(rows: list[dict[str, str]], sep: str) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=sep)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=2)
    return sink.getvalue()


ENCODERS: dict[str, Callable[[list[dict[str, Any]]], bytes]] = {
    "csv": lambda rows: _csv(rows, ","),
    "tsv": lambda rows: _csv(rows, "\t"),
    "jsonl": lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(),
    "json": lambda rows: json.dumps(rows, ensure_ascii=False, indent=2).encode(),
    "parquet": _parquet,
}


def upload(persona: Persona, filename: str, content: bytes, **form: str) -> Any:
    return persona.post(
        "/api/v1/datasets", files={"file": (filename, io.BytesIO(content))}, data=form
    )


def canonical_rows(persona: Persona, dataset_id: int) -> list[dict[str, Any]]:
    response = persona.get(f"/api/v1/datasets/{dataset_id}/download?kind=canonical")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_each_format_is_converted_to_canonical_prompt_completion_rows(
    team: Team, fmt: str, compressed: bool
) -> None:
    content = ENCODERS[fmt](QA)
    filename = f"qa.{fmt}"
    if compressed:
        content, filename = gzip.compress(content), filename + ".gz"
    response = upload(team.editor, filename, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "prompt_completion" and body["num_rows"] == 3
    assert body["detection"]["column_map"] == {"prompt": "question", "completion": "answer"}
    assert canonical_rows(team.editor, body["id"]) == CANONICAL_QA
    original = team.editor.get(f"/api/v1/datasets/{body['id']}/download?kind=original")
    assert original.content == content


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("blocks", ["第一段。\n还是第一段。", "second block"]),
        ("lines", ["第一段。", "还是第一段。", "second block"]),
        ("file", ["第一段。\n还是第一段。\n\n\nsecond block"]),
    ],
)
def test_plain_text_becomes_one_document_per_block_line_or_file(
    team: Team, split: str, expected: list[str]
) -> None:
    content = "第一段。\n还是第一段。\n\n\nsecond block\n".encode()
    response = upload(team.editor, "book.txt.gz", gzip.compress(content), text_split=split)
    assert response.status_code == 201, response.text
    assert canonical_rows(team.editor, response.json()["id"]) == [{"text": t} for t in expected]


@pytest.mark.parametrize(
    ("rows", "schema", "first"),
    [
        ([{"text": "hello world"}], "text", {"text": "hello world"}),
        (
            [{"prompt": "a", "completion": "b"}],
            "prompt_completion",
            {"prompt": "a", "completion": "b"},
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo"},
                    ]
                }
            ],
            "chat",
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
        ),
        (
            [{"instruction": "translate", "input": "chat", "output": "cat"}],
            "instruction",
            {"instruction": "translate", "input": "chat", "output": "cat"},
        ),
        (
            [{"instruction": "say hi", "response": "hi"}],
            "instruction",
            {"instruction": "say hi", "input": "", "output": "hi"},
        ),
        (
            [{"sentence": "great film", "label": 1}],
            "classification",
            {"text": "great film", "label": "1"},
        ),
        ([{"src": "Hallo", "tgt": "Hello"}], "seq2seq", {"source": "Hallo", "target": "Hello"}),
        (
            [{"article": "long text", "summary": "short"}],
            "seq2seq",
            {"source": "long text", "target": "short"},
        ),
        (
            [{"input": "2+2", "output": "4"}],
            "prompt_completion",
            {"prompt": "2+2", "completion": "4"},
        ),
    ],
)
def test_schema_is_detected_from_common_column_names(
    team: Team, rows: list[dict[str, Any]], schema: str, first: dict[str, Any]
) -> None:
    response = upload(team.editor, "data.jsonl", ENCODERS["jsonl"](rows))
    assert response.status_code == 201, response.text
    assert response.json()["format"] == schema
    assert canonical_rows(team.editor, response.json()["id"])[0] == first


def test_columns_are_mapped_by_hand_when_the_names_are_unknown(team: Team) -> None:
    content = _csv([{"frage": "Wie geht's?", "antwort": "Gut."}], ",")
    unsure = upload(team.editor, "de.csv", content)
    assert unsure.status_code == 400 and "column_map" in unsure.json()["detail"]
    mapped = upload(
        team.editor,
        "de.csv",
        content,
        schema="prompt_completion",
        column_map=json.dumps({"prompt": "frage", "completion": "antwort"}),
    )
    assert mapped.status_code == 201, mapped.text
    assert canonical_rows(team.editor, mapped.json()["id"]) == [
        {"prompt": "Wie geht's?", "completion": "Gut."}
    ]
    other = content + b"Wer?,Ich.\n"
    wrong = upload(team.editor, "de2.csv", other, schema="seq2seq", column_map='{"source": "nope"}')
    assert wrong.status_code == 400 and "no column 'nope'" in wrong.json()["detail"]


def _chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (
            _chat(("assistant", "hi"), ("user", "x")),
            "wrong role order: the first message is from the assistant",
        ),
        (
            _chat(("user", "a"), ("system", "s"), ("assistant", "b")),
            "wrong role order: message 2 is a system",
        ),
        (
            _chat(("user", "a"), ("tool", "42"), ("assistant", "b")),
            "wrong role order: message 2 (tool) must follow an assistant",
        ),
        (_chat(("user", "a"), ("robot", "b")), "message 2 has role 'robot'"),
        (
            _chat(
                ("user", "a"),
            ),
            "a chat example needs at least one assistant message",
        ),
        (_chat(("user", "  "), ("assistant", "b")), "message 1 (user) has empty text"),
        ('{"messages": {"role": "user"}}', '"messages" must be a non-empty list'),
        ('{"messages": [{"role": "user", "content": "a"}', "invalid JSON"),
    ],
)
def test_chat_rows_are_checked_and_the_bad_line_is_named(
    team: Team, bad_line: str, reason: str
) -> None:
    good = _chat(("user", "hi"), ("assistant", "hello"))
    content = f"{good}\n{good}\n{bad_line}\n{good}\n".encode()
    response = upload(team.editor, "chat.jsonl", content)
    assert response.status_code == 400, response.text
    assert f"line 3: {reason}" in response.json()["detail"]
    assert "nothing was stored" in response.json()["detail"]
    assert team.editor.get("/api/v1/datasets").json() == []


def test_chat_tolerates_system_prompts_and_tool_calls(team: Team) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function"}],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    response = upload(team.editor, "tools.jsonl", (json.dumps(row) + "\n").encode())
    assert response.status_code == 201, response.text
    stored = canonical_rows(team.editor, response.json()["id"])[0]["messages"]
    assert stored[2]["tool_calls"] == [{"id": "c1", "type": "function"}]
    assert stored[2]["content"] == "" and stored[3]["tool_call_id"] == "c1"


def test_csv_problems_are_reported_with_line_numbers_and_kept_apart_with_keep_valid(
    team: Team,
) -> None:
    content = (
        b"text,label\n"
        b"good one,pos\n"
        b"no label,\n"  # line 3
        b",neg\n"  # line 4
        b'"multi\nline",pos\n'  # lines 5-6
        b"too,many,fields\n"  # line 7
    ) + b"caf\xe9,pos\n"  # line 8
    rejected = upload(team.editor, "cls.csv", content)
    assert rejected.status_code == 400
    detail = rejected.json()["detail"]
    for expected in (
        'line 3: label missing (column "label")',
        'line 4: "text" is empty',
        "line 7: expected 2 fields like the header, found 3",
        "line 8: encoding error: not valid UTF-8",
    ):
        assert expected in detail, detail
    kept = upload(team.editor, "cls.csv", content, on_error="keep_valid")
    assert kept.status_code == 201, kept.text
    body = kept.json()
    assert body["num_rows"] == 2 and body["rejected_rows"] == 4
    assert canonical_rows(team.editor, body["id"]) == [
        {"text": "good one", "label": "pos"},
        {"text": "multi\nline", "label": "pos"},
    ]
    download = team.editor.get(f"/api/v1/datasets/{body['id']}/download?kind=rejected")
    assert download.status_code == 200
    assert "rejected" in download.headers["content-disposition"]
    lines = [json.loads(x) for x in download.text.splitlines()]
    assert [(x["location"], x["reason"][:12]) for x in lines] == [
        ("line 3", "label missin"),
        ("line 4", '"text" is em'),
        ("line 7", "expected 2 f"),
        ("line 8", "encoding err"),
    ]


def test_json_array_problems_name_the_row_and_its_line(team: Team) -> None:
    content = b'[\n  {"text": "ok"},\n  {"text": ""},\n  {"txt": "x"}\n]\n'
    response = upload(team.editor, "rows.json", content)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert 'row 2 (line 3): "text" is empty' in detail
    assert 'row 3 (line 4): missing field: "text"' in detail


def test_a_file_with_only_bad_rows_is_refused_even_with_keep_valid(team: Team) -> None:
    response = upload(team.editor, "bad.jsonl", b'{"text": ""}\n', on_error="keep_valid")
    assert response.status_code == 400 and "no valid rows" in response.json()["detail"]


@pytest.mark.parametrize(
    ("env", "content", "status", "names"),
    [
        ("LLMIDE_MAX_UPLOAD_BYTES", text_jsonl(50).encode(), 413, "LLMIDE_MAX_UPLOAD_BYTES"),
        ("LLMIDE_MAX_DATASET_ROWS", text_jsonl(50).encode(), 413, "max_dataset_rows"),
        ("LLMIDE_MAX_LINE_BYTES", b'{"text": "' + b"a" * 300 + b'"}\n', 400, "max_line_bytes"),
    ],
)
def test_limits_answer_with_the_name_of_the_limit(
    team: Team, monkeypatch: pytest.MonkeyPatch, env: str, content: bytes, status: int, names: str
) -> None:
    monkeypatch.setenv(env, "200" if env != "LLMIDE_MAX_DATASET_ROWS" else "10")
    get_settings.cache_clear()
    try:
        response = upload(team.editor, "big.jsonl", content)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert response.status_code == status, response.text
    assert names in response.json()["detail"]
    assert team.editor.get("/api/v1/datasets").json() == []


def test_gzip_bomb_stops_at_the_dataset_size_limit(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMIDE_MAX_DATASET_BYTES", "100000")
    get_settings.cache_clear()
    try:
        bomb = gzip.compress(b'{"text": "' + b"a" * 500_000 + b'"}\n')
        response = upload(team.editor, "bomb.jsonl.gz", bomb)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert response.status_code == 413 and "max_dataset_bytes" in response.json()["detail"]


def test_duplicate_upload_answers_with_the_existing_dataset(team: Team, installation: Path) -> None:
    first = upload(team.editor, "a.jsonl", text_jsonl(5).encode(), name="first")
    assert first.status_code == 201 and first.json()["duplicate"] is False
    again = upload(team.owner, "b.jsonl", text_jsonl(5).encode(), name="second")
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]
    assert "already uploaded as dataset" in again.json()["message"]
    assert len(team.editor.get("/api/v1/datasets").json()) == 1
    # Another workspace is not told about it: it gets its own dataset.
    elsewhere = upload(team.outsider, "a.jsonl", text_jsonl(5).encode())
    assert elsewhere.status_code == 201 and elsewhere.json()["duplicate"] is False


def test_preview_pages_and_searches_chinese_text(team: Team) -> None:
    rows = [{"text": f"第{i}行：今天天气很好"} for i in range(30)] + [
        {"text": "机器学习很有趣"},
        {"text": "Machine LEARNING is fun"},
    ]
    created = upload(team.editor, "zh.jsonl", ENCODERS["jsonl"](rows))
    dataset_id = created.json()["id"]
    page = team.viewer.get(f"/api/v1/datasets/{dataset_id}/preview?offset=10&limit=5").json()
    assert [item["row"] for item in page["items"]] == [11, 12, 13, 14, 15] and page["has_more"]
    found = team.viewer.get(f"/api/v1/datasets/{dataset_id}/preview", params={"q": "学习"}).json()
    assert [item["data"]["text"] for item in found["items"]] == ["机器学习很有趣"]
    assert found["items"][0]["row"] == 31 and not found["has_more"]
    folded = team.viewer.get(f"/api/v1/datasets/{dataset_id}/preview?q=learning").json()
    assert [item["row"] for item in folded["items"]] == [32]
    stats = team.viewer.get(f"/api/v1/datasets/{dataset_id}/stats").json()["stats"]
    assert stats["rows"] == 32 and stats["scripts"] == {"Han": 31, "Latin": 1}
    # Characters, not bytes or words: "机器学习很有趣" is 7 characters.
    assert stats["characters"]["min"] == 7


def test_stats_count_labels_roles_and_exact_duplicates(team: Team) -> None:
    cls = "".join(
        json.dumps({"text": t, "label": lab}) + "\n"
        for t, lab in [("good", "pos"), ("bad", "neg"), ("good", "pos"), ("fine", "pos")]
    )
    stats = team.editor.get(
        f"/api/v1/datasets/{upload(team.editor, 'c.jsonl', cls.encode()).json()['id']}/stats"
    ).json()["stats"]
    assert stats["labels"] == {"pos": 3, "neg": 1}
    assert stats["duplicates"]["rows"] == 1 and stats["duplicates"]["rate"] == 0.25
    chat = (_chat(("system", "s"), ("user", "u"), ("assistant", "a")) + "\n") * 2
    chat_id = upload(team.editor, "chat.jsonl", chat.encode()).json()["id"]
    chat_stats = team.editor.get(f"/api/v1/datasets/{chat_id}/stats").json()["stats"]
    assert chat_stats["roles"] == {"system": 2, "user": 2, "assistant": 2}


def test_upload_creates_version_one_and_runs_record_the_version(team: Team, backend: str) -> None:
    dataset_id = upload(team.editor, "t.jsonl", text_jsonl(8).encode()).json()["id"]
    versions = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions").json()
    assert [(v["version"], v["status"], v["schema"], v["recipe"]) for v in versions] == [
        (1, "ready", "text", {})
    ]
    version_id = versions[0]["id"]
    run = team.editor.post(
        "/api/v1/runs", json={"dataset_id": dataset_id, "config": {"max_steps": 1}}
    )
    assert run.status_code == 201 and run.json()["dataset_version_id"] == version_id
    explicit = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": dataset_id,
            "dataset_version_id": version_id,
            "config": {"max_steps": 1},
        },
    )
    assert explicit.status_code == 201 and explicit.json()["dataset_version_id"] == version_id
    other_id = upload(team.editor, "o.jsonl", text_jsonl(9).encode()).json()["id"]
    wrong = team.editor.post(
        "/api/v1/runs", json={"dataset_id": other_id, "dataset_version_id": version_id}
    )
    assert wrong.status_code == 400 and "does not belong" in wrong.json()["detail"]
    refused = team.editor.delete(f"/api/v1/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert f"run {run.json()['id']}" in refused.json()["detail"]


def test_chunked_upload_resumes_after_a_dropped_connection(team: Team, backend: str) -> None:
    content = gzip.compress(ENCODERS["csv"](QA * 50))
    started = team.editor.post(
        "/api/v1/uploads", json={"filename": "qa.csv.gz", "total_size": len(content)}
    )
    assert started.status_code == 201, started.text
    upload_id = started.json()["id"]
    url = f"/api/v1/uploads/{upload_id}"
    half = len(content) // 2
    first = team.editor.client.put(
        url,
        content=content[:half],
        headers={**team.editor.headers, "Content-Range": f"bytes 0-{half - 1}/{len(content)}"},
    )
    assert first.status_code == 200 and first.json()["received"] == half
    # The client drops; a retry of the same chunk is refused with the offset to resume from.
    replay = team.editor.client.put(
        f"{url}?offset=0", content=content[:half], headers=team.editor.headers
    )
    assert replay.status_code == 409 and f"offset {half}" in replay.json()["detail"]
    early = team.editor.post(f"{url}/complete")
    assert early.status_code == 409 and f"received {half} of" in early.json()["detail"]
    # Another member cannot see or touch someone else's upload.
    assert team.owner.get(url).status_code == 404
    resumed_at = team.editor.get(url).json()["received"]
    rest = team.editor.client.put(
        f"{url}?offset={resumed_at}", content=content[resumed_at:], headers=team.editor.headers
    )
    assert rest.status_code == 200 and rest.json()["received"] == len(content)
    done = team.editor.post(f"{url}/complete", data={"name": "chunked qa"})
    assert done.status_code == 201, done.text
    body = done.json()
    assert body["format"] == "prompt_completion" and body["num_rows"] == 150
    assert canonical_rows(team.editor, body["id"])[:3] == CANONICAL_QA
    assert team.editor.get(url).json()["status"] == "completed"


def test_chunked_upload_refuses_a_file_over_the_dataset_limit(team: Team) -> None:
    too_big = get_settings().max_dataset_bytes + 1
    response = team.editor.post(
        "/api/v1/uploads", json={"filename": "x.csv", "total_size": too_big}
    )
    assert response.status_code == 413 and "LLMIDE_MAX_DATASET_BYTES" in response.json()["detail"]


def test_stale_chunked_uploads_are_deleted_with_their_part_files(
    team: Team, installation: Path
) -> None:
    from datetime import timedelta

    from app.db.base import utcnow
    from app.db.models import ChunkedUpload
    from app.db.session import session_scope

    old = team.editor.post("/api/v1/uploads", json={"filename": "old.csv", "total_size": 10})
    old_id = old.json()["id"]
    part = installation / "artifacts" / "uploads" / f"{old_id}.part"
    assert part.exists()
    sent = team.editor.client.put(
        f"/api/v1/uploads/{old_id}?offset=0", content=b"12345", headers=team.editor.headers
    )
    assert sent.status_code == 200
    with session_scope() as session:
        upload = session.get(ChunkedUpload, old_id)
        assert upload is not None
        upload.updated_at = utcnow() - timedelta(
            seconds=get_settings().chunked_upload_max_age_s + 1
        )
    fresh = team.editor.post("/api/v1/uploads", json={"filename": "new.csv", "total_size": 10})
    assert fresh.status_code == 201
    with session_scope() as session:
        names = [u.filename for u in session.query(ChunkedUpload)]
    assert names == ["new.csv"]
    # (SQLite may give the new upload the freed id: its part file is a new, empty one.)
    assert not part.exists() or part.stat().st_size == 0


def test_openai_files_accepts_the_new_formats(team: Team) -> None:
    content = gzip.compress(_csv(QA, ","))
    response = team.editor.post(
        "/v1/files",
        files={"file": ("qa.csv.gz", io.BytesIO(content))},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    file_id = response.json()["id"]
    assert team.editor.get(f"/v1/files/{file_id}/content").content == content
    dataset_id = int(file_id.removeprefix("file-"))
    assert canonical_rows(team.editor, dataset_id) == CANONICAL_QA


def test_deleting_a_dataset_keeps_files_another_workspace_shares(team: Team) -> None:
    content = text_jsonl(7).encode()
    mine = upload(team.editor, "same.jsonl", content).json()["id"]
    theirs = upload(team.outsider, "same.jsonl", content).json()["id"]
    assert team.editor.delete(f"/api/v1/datasets/{mine}").status_code == 204
    for kind in ("canonical", "original"):
        response = team.outsider.get(f"/api/v1/datasets/{theirs}/download?kind={kind}")
        assert response.status_code == 200, (kind, response.text)
    assert team.outsider.get(f"/api/v1/datasets/{theirs}/download?kind=original").content == content
