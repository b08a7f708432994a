"""Uploading datasets: validation while streaming, clear errors, nothing stored on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Team, chat_jsonl, text_jsonl


def stored_files(data_dir: Path) -> list[Path]:
    root = data_dir / "artifacts" / "datasets"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_accepts_text_jsonl_and_shows_preview(team: Team, backend: str) -> None:
    response = team.editor.upload("corpus.jsonl", text_jsonl(12), name="Greetings")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Greetings" and body["num_rows"] == 12 and len(body["preview"]) == 5
    fetched = team.viewer.get(f"/api/v1/datasets/{body['id']}").json()
    assert fetched["sha256"] == body["sha256"]


def test_upload_accepts_openai_chat_format(team: Team) -> None:
    response = team.editor.upload("chat.jsonl", chat_jsonl(4))
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "chat"
    assert response.json()["preview"][0]["messages"][1]["role"] == "assistant"


def test_upload_accepts_plain_text_file(team: Team) -> None:
    response = team.editor.upload("book.txt", "first line\n\nsecond line\n")
    assert response.status_code == 201 and response.json()["num_rows"] == 2


def test_upload_rejects_jsonl_with_bad_line_and_reports_line_number(
    team: Team, installation: Path, backend: str
) -> None:
    content = text_jsonl(2) + '{"text": "unterminated\n' + text_jsonl(1)
    response = team.editor.upload("bad.jsonl", content)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("line 3: invalid JSON")
    assert team.editor.get("/api/v1/datasets").json() == []
    assert stored_files(installation) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "x"}\n', "line 1: missing field"),
        ('["a list"]\n', "line 1: each row must be a JSON object"),
        ('{"text": ""}\n', 'line 1: "text" is empty'),
        ('{"text": 5}\n', 'line 1: "text" must be a string'),
        (
            '{"text": "ok"}\n{"messages": [{"role": "robot", "content": "x"}]}\n',
            "line 2: message 1 has role",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: a chat example needs"),
        (b'{"text": "caf\xe9"}\n', "line 1: encoding error: not valid UTF-8"),
    ],
)
def test_upload_rejects_malformed_rows_with_a_clear_message(
    team: Team, installation: Path, content: str | bytes, message: str
) -> None:
    response = team.editor.upload("bad.jsonl", content)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    assert stored_files(installation) == []


def test_upload_rejects_an_empty_file(team: Team) -> None:
    response = team.editor.upload("empty.jsonl", "")
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_upload_rejects_unsupported_extension(team: Team) -> None:
    response = team.editor.upload("weights.pkl", b"\x80\x04")
    assert response.status_code == 400
    assert "unsupported file type" in response.json()["detail"]


def test_upload_over_the_size_limit_is_refused_and_leaves_nothing(
    team: Team, installation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    big = "".join(json.dumps({"text": "x" * 90}) + "\n" for _ in range(20))
    response = team.editor.upload("big.jsonl", big)
    assert response.status_code == 413
    assert "upload limit" in response.json()["detail"]
    assert stored_files(installation) == []
    assert team.editor.get("/api/v1/datasets").json() == []


def test_request_body_over_the_app_limit_gets_413_before_it_is_read(client, team: Team) -> None:
    from app.core.settings import get_settings

    too_big = b"a" * (get_settings().max_upload_bytes + 100 * 1024)
    response = team.editor.upload("huge.txt", too_big)
    assert response.status_code == 413
    assert "upload limit" in response.json()["detail"]


def test_file_name_with_path_tricks_is_reduced_to_its_last_component(
    team: Team, installation: Path
) -> None:
    response = team.editor.upload("../../etc/passwd.jsonl", text_jsonl(2))
    assert response.status_code == 201
    assert response.json()["filename"] == "passwd.jsonl"
    assert all(
        p.is_relative_to(installation / "artifacts" / "datasets") and "passwd" not in p.name
        for p in stored_files(installation)
    )


def test_viewer_cannot_upload(team: Team) -> None:
    response = team.viewer.upload("corpus.jsonl", text_jsonl(3))
    assert response.status_code == 403
    assert "viewer" in response.json()["detail"]


def test_dataset_of_another_workspace_is_not_found(team: Team, backend: str) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(3)).json()["id"]
    assert team.outsider.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert team.outsider.delete(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert team.editor.get(f"/api/v1/datasets/{dataset_id}").status_code == 200


def test_dataset_used_by_a_run_cannot_be_deleted(team: Team) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(3)).json()["id"]
    team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id})
    response = team.editor.delete(f"/api/v1/datasets/{dataset_id}")
    assert response.status_code == 409 and "used by run " in response.json()["detail"]


def test_deleting_a_dataset_removes_its_file(team: Team, installation: Path) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(3)).json()["id"]
    assert team.editor.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    assert stored_files(installation) == []
