"""OpenAI `files` on datasets: upload, list, retrieve, content, delete, and their errors."""

from __future__ import annotations

import io
import json

import openai
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Team, text_jsonl
from tests.openai.conftest import OpenAIFor, create_job, raw_json, upload_file
from tests.openai.openai_schema import assert_openai_error, assert_schema


@pytest.fixture(autouse=True)
def _both_databases(backend: str) -> None:
    """Every test here runs on SQLite and on Postgres."""


def test_files_upload_list_retrieve_and_delete_through_the_openai_package(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    content = text_jsonl(12).encode()

    raw = oa.files.with_raw_response.create(
        file=("train.jsonl", io.BytesIO(content)), purpose="fine-tune"
    )
    created = raw_json(raw, "OpenAIFile")
    assert created["id"].startswith("file-")
    assert created["object"] == "file"
    assert created["bytes"] == len(content)
    assert created["filename"] == "train.jsonl"
    assert created["purpose"] == "fine-tune"
    assert created["status"] == "processed"
    assert isinstance(created["created_at"], int)

    listed = raw_json(oa.files.with_raw_response.list(), "ListFilesResponse")
    assert [f["id"] for f in listed["data"]] == [created["id"]]
    assert listed["first_id"] == listed["last_id"] == created["id"]
    assert listed["has_more"] is False

    retrieved = raw_json(oa.files.with_raw_response.retrieve(created["id"]), "OpenAIFile")
    assert retrieved == created
    assert oa.files.retrieve(created["id"]).filename == "train.jsonl"

    deleted = raw_json(oa.files.with_raw_response.delete(created["id"]), "DeleteFileResponse")
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve(created["id"])
    assert assert_schema(team.editor.get("/v1/files").json(), "ListFilesResponse") == {
        "object": "list",
        "data": [],
        "first_id": "",
        "last_id": "",
        "has_more": False,
    }


def test_files_content_returns_the_uploaded_rows(team: Team, openai_for: OpenAIFor) -> None:
    file_id = upload_file(team.owner, text_jsonl(3))
    content = openai_for(team.owner).files.content(file_id).read().decode()
    assert [json.loads(line) for line in content.splitlines()] == [
        json.loads(line) for line in text_jsonl(3).splitlines()
    ]


def test_files_upload_rejects_bad_jsonl_with_openai_error_naming_the_line(
    team: Team, openai_for: OpenAIFor
) -> None:
    bad = json.dumps({"text": "fine"}) + "\n" + '{"text": "no closing brace"\n'
    response = team.owner.post(
        "/v1/files",
        files={"file": ("bad.jsonl", io.BytesIO(bad.encode()))},
        data={"purpose": "fine-tune"},
    )
    error = assert_openai_error(response, 400)
    assert "line 2" in error["message"]
    assert error["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError, match="line 2"):
        openai_for(team.owner).files.create(
            file=("bad.jsonl", io.BytesIO(bad.encode())), purpose="fine-tune"
        )
    assert team.owner.get("/v1/files").json()["data"] == []


def test_files_upload_refuses_purposes_other_than_fine_tune(team: Team) -> None:
    response = team.owner.post(
        "/v1/files",
        files={"file": ("train.jsonl", io.BytesIO(text_jsonl().encode()))},
        data={"purpose": "assistants"},
    )
    error = assert_openai_error(response, 400)
    assert error["param"] == "purpose"
    assert "fine-tune" in error["message"]

    missing = team.owner.post(
        "/v1/files", files={"file": ("train.jsonl", io.BytesIO(text_jsonl().encode()))}
    )
    assert assert_openai_error(missing, 400)["param"] == "purpose"


def test_files_list_pages_with_after_and_limit(team: Team, openai_for: OpenAIFor) -> None:
    ids = [upload_file(team.owner, text_jsonl(i + 2), f"t{i}.jsonl") for i in range(3)]
    newest_first = ids[::-1]

    first = assert_schema(team.owner.get("/v1/files?limit=2").json(), "ListFilesResponse")
    assert [f["id"] for f in first["data"]] == newest_first[:2]
    assert first["has_more"] is True
    rest = team.owner.get(f"/v1/files?limit=2&after={first['last_id']}").json()
    assert [f["id"] for f in assert_schema(rest, "ListFilesResponse")["data"]] == newest_first[2:]
    assert rest["has_more"] is False

    oldest_first = team.owner.get("/v1/files?order=asc").json()
    assert [f["id"] for f in oldest_first["data"]] == ids

    # The official client follows the cursor by itself.
    assert [f.id for f in openai_for(team.owner).files.list(limit=1)] == newest_first
    assert team.owner.get("/v1/files?purpose=assistants").json()["data"] == []


@pytest.mark.parametrize("file_id", ["file-abc", "file-99999", "abc", "file-99999999999999"])
def test_files_unknown_or_malformed_ids_are_not_found(
    team: Team, openai_for: OpenAIFor, file_id: str
) -> None:
    for call in (team.owner.get, team.owner.delete):
        assert_openai_error(call(f"/v1/files/{file_id}"), 404)
    assert_openai_error(team.owner.get(f"/v1/files/{file_id}/content"), 404)
    with pytest.raises(openai.NotFoundError):
        openai_for(team.owner).files.retrieve(file_id)


def test_files_of_another_workspace_are_not_found(team: Team, openai_for: OpenAIFor) -> None:
    file_id = upload_file(team.owner)
    error = assert_openai_error(team.outsider.get(f"/v1/files/{file_id}"), 404)
    assert file_id in error["message"]
    assert_openai_error(team.outsider.delete(f"/v1/files/{file_id}"), 404)
    assert_openai_error(team.outsider.get(f"/v1/files/{file_id}/content"), 404)
    assert team.outsider.get("/v1/files").json()["data"] == []
    with pytest.raises(openai.NotFoundError):
        openai_for(team.outsider).files.delete(file_id)
    assert team.owner.get(f"/v1/files/{file_id}").status_code == 200


def test_viewer_can_read_files_but_not_upload_or_delete_them(
    team: Team, openai_for: OpenAIFor
) -> None:
    file_id = upload_file(team.owner)
    viewer = openai_for(team.viewer)
    assert viewer.files.retrieve(file_id).id == file_id
    with pytest.raises(openai.PermissionDeniedError):
        viewer.files.create(
            file=("t.jsonl", io.BytesIO(text_jsonl().encode())), purpose="fine-tune"
        )
    with pytest.raises(openai.PermissionDeniedError):
        viewer.files.delete(file_id)
    assert_openai_error(team.viewer.delete(f"/v1/files/{file_id}"), 403)


def test_deleting_a_file_a_job_trains_on_is_a_conflict(team: Team) -> None:
    file_id = upload_file(team.owner)
    create_job(team.owner, file_id)
    error = assert_openai_error(team.owner.delete(f"/v1/files/{file_id}"), 409)
    assert "run" in error["message"]


def test_requests_without_a_valid_token_get_an_openai_authentication_error(
    team: Team, client: TestClient, openai_for: OpenAIFor
) -> None:
    error = assert_openai_error(client.get("/v1/files"), 401)
    assert error["type"] == "authentication_error"
    assert_openai_error(client.get("/v1/files", headers={"Authorization": "Bearer nope"}), 401)

    team.owner.token = "llmide-not-a-token"
    with pytest.raises(openai.AuthenticationError):
        openai_for(team.owner).files.list()


def test_identical_uploads_are_separate_file_objects_and_deleting_one_keeps_the_other(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    content = text_jsonl(5).encode()
    first = oa.files.create(file=("a.jsonl", io.BytesIO(content)), purpose="fine-tune")
    second = oa.files.create(file=("b.jsonl", io.BytesIO(content)), purpose="fine-tune")

    assert first.id != second.id
    assert (oa.files.retrieve(first.id).filename, oa.files.retrieve(second.id).filename) == (
        "a.jsonl",
        "b.jsonl",
    )
    assert {f.id for f in oa.files.list()} == {first.id, second.id}

    assert oa.files.delete(first.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve(first.id)
    assert oa.files.retrieve(second.id).filename == "b.jsonl"
    assert oa.files.content(second.id).read() == content
    job = create_job(team.editor, second.id)  # its data is still there to train on
    assert job["training_file"] == second.id
