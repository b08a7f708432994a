"""What an outside probe sent to upload, import and JSON endpoints: each gets a clear 4xx.

Deep nesting, lone surrogates, preference data, damaged zip archives, special files, absurd
key counts: never a 500 or a reset connection (issue 18).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Team
from tests.registry.test_import import allow_imports_from, upload

DEEP_ROW = "[" * 5000 + "]" * 5000
SURROGATE = '{"text": "broken \\ud800 text"}'


def raw_json_post(persona, url: str, body: str | bytes):  # type: ignore[no-untyped-def]
    data = body.encode() if isinstance(body, str) else body
    return persona.post(url, content=data, headers={"Content-Type": "application/json"})


# --- dataset uploads --------------------------------------------------------------------------
def test_a_jsonl_row_nested_5000_deep_is_a_row_problem_not_a_server_error(team: Team) -> None:
    answer = team.editor.upload("deep.jsonl", '{"text": "fine"}\n{"text": ' + DEEP_ROW + "}\n")
    assert answer.status_code == 400, answer.text
    assert "line 2" in answer.json()["detail"]
    assert "nested deeper than 64 levels" in answer.json()["detail"]
    kept = team.editor.upload(
        "deep.jsonl", '{"text": "fine"}\n{"text": ' + DEEP_ROW + "}\n", on_error="keep_valid"
    )
    assert kept.status_code == 201, kept.text
    assert kept.json()["num_rows"] == 1 and kept.json()["rejected_rows"] == 1


def test_a_json_array_nested_100000_deep_is_refused_with_a_400(team: Team) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    answer = team.editor.upload("deep.json", deep)
    assert answer.status_code == 400, answer.text
    assert "nested deeper than 64 levels" in answer.json()["detail"]


def test_a_lone_surrogate_in_a_dataset_row_is_refused_by_its_line(team: Team) -> None:
    for name, content in (("s.jsonl", SURROGATE + "\n"), ("s.json", f"[{SURROGATE}]")):
        answer = team.editor.upload(name, content)
        assert answer.status_code == 400, answer.text
        assert "lone UTF-16 surrogate" in answer.json()["detail"]
    # A proper pair (an emoji written as escapes) is text and is accepted.
    emoji = team.editor.upload("ok.jsonl", '{"text": "smile \\ud83d\\ude00"}\n')
    assert emoji.status_code == 201, emoji.text


def test_preference_files_are_ingested_and_a_broken_pair_is_a_row_problem(team: Team) -> None:
    """Preference data was refused by name before DPO existed (issue 18); now it is a schema
    (issue 14), and what is wrong in a pair is that line's 400, never a 500."""
    row = {
        "input": {"messages": [{"role": "user", "content": "Hello"}]},
        "preferred_output": [{"role": "assistant", "content": "Hi, how can I help?"}],
        "non_preferred_output": [{"role": "assistant", "content": "What?"}],
    }
    data = (json.dumps(row) + "\n").encode() * 3
    answer = team.editor.post(
        "/v1/files",
        files={"file": ("dpo.jsonl", io.BytesIO(data))},
        data={"purpose": "fine-tune"},
    )
    assert answer.status_code == 200, answer.text
    broken = team.editor.upload(
        "pairs.jsonl",
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
        + "\n"
        + json.dumps({"prompt": "a", "chosen": {"role": "assistant"}, "rejected": "c"})
        + "\n",
    )
    assert broken.status_code == 400 and "line 2" in broken.json()["detail"]


def test_a_file_with_only_some_columns_of_a_schema_names_the_missing_field(team: Team) -> None:
    # "input" alone suggests the instruction schema without its instruction column.
    answer = team.editor.upload("partial.jsonl", json.dumps({"input": "x", "other": 1}) + "\n")
    assert answer.status_code == 400, answer.text
    assert "missing field" in answer.json()["detail"]


def test_a_deeply_nested_column_map_is_refused_like_any_malformed_one(team: Team) -> None:
    answer = team.editor.upload("d.jsonl", '{"text": "hi"}\n', column_map="[" * 1999 + "]" * 1999)
    assert answer.status_code == 400, answer.text
    assert answer.json()["param"] == "column_map"


# --- request bodies ---------------------------------------------------------------------------
def test_a_lone_surrogate_in_a_json_body_is_refused_before_any_route_sees_it(
    team: Team, backend: str
) -> None:
    body = '{"name": "token \\ud800"}'
    answer = raw_json_post(team.editor, "/api/v1/tokens", body)
    assert answer.status_code == 400, answer.text
    assert "lone UTF-16 surrogate" in answer.json()["detail"]
    chat = raw_json_post(
        team.editor,
        "/v1/chat/completions",
        '{"model": "m", "messages": [{"role": "user", "content": "\\udfff"}]}',
    )
    assert chat.status_code == 400
    assert "surrogate" in chat.json()["error"]["message"]
    assert chat.json()["error"]["code"] == "invalid_json"
    # Raw surrogate bytes (not valid UTF-8, but json.loads lets them through) too.
    raw = raw_json_post(team.editor, "/api/v1/tokens", b'{"name": "x\xed\xa0\x80"}')
    assert raw.status_code == 400, raw.text
    # FastAPI parses a body without a content type as JSON as well.
    untyped = team.editor.post("/api/v1/tokens", content=body.encode())
    assert untyped.status_code == 400, untyped.text


def test_json_bodies_nested_deeper_than_64_levels_are_refused(team: Team) -> None:
    for depth in (100, 100_000):
        body = '{"name": ' + "[" * depth + "]" * depth + "}"
        answer = raw_json_post(team.editor, "/api/v1/tokens", body)
        assert answer.status_code == 400, answer.text
        assert "nested deeper than 64 levels" in answer.json()["detail"]
    ordinary = raw_json_post(team.editor, "/api/v1/tokens", '{"name": "ordinary"}')
    assert ordinary.status_code == 201


def test_a_body_with_a_huge_number_of_keys_is_refused_early_with_a_short_answer(
    team: Team,
) -> None:
    keys = {f"k{i}": 1 for i in range(20_000)}
    answer = raw_json_post(team.editor, "/api/v1/runs", json.dumps({"config": keys}))
    assert answer.status_code == 400, answer.text
    assert "20001 object keys" in answer.json()["detail"]
    assert len(answer.content) < 1000


def test_validation_errors_are_capped_in_number_and_length(team: Team) -> None:
    keys = {f"unknown_{i}": 1 for i in range(2_000)}
    answer = team.editor.post(
        "/api/v1/runs", json={"base_model": "scratch-tiny", "dataset_id": 1, "config": keys}
    )
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "(and 1990 more problems)" in detail
    assert len(answer.content) < 5000


# --- model imports ----------------------------------------------------------------------------
def _model_zip(compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr("config.json", '{"model_type": "gpt2"}')
        archive.writestr("model.safetensors", b"W" * 4096)
    return buffer.getvalue()


def _central_entry(data: bytes, name: bytes) -> int:
    """Offset of the central-directory record of `name`."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack("<H", data[at + 28 : at + 30])[0]
        if data[at + 46 : at + 46 + length] == name:
            return at
        at = data.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"{name!r} not in the archive")


def bad_crc_zip() -> bytes:
    data = bytearray(_model_zip())
    at = data.find(b"W" * 4096)
    data[at + 100] = ord("X")  # stored data changed, CRC left alone
    return bytes(data)


def renamed_local_header_zip() -> bytes:
    data = bytearray(_model_zip())
    at = data.find(b"PK\x03\x04" + data[4:26])  # the first local header: config.json
    assert data[at + 30 : at + 41] == b"config.json"
    data[at + 30 : at + 41] = b"confix.json"
    return bytes(data)


def understated_size_zip() -> bytes:
    data = bytearray(_model_zip(zipfile.ZIP_DEFLATED))
    at = _central_entry(bytes(data), b"model.safetensors")
    data[at + 24 : at + 28] = struct.pack("<I", 100)  # uncompressed size: 100, not 4096
    return bytes(data)


@pytest.mark.parametrize("archive", [bad_crc_zip, renamed_local_header_zip, understated_size_zip])
def test_a_damaged_model_zip_is_refused_with_a_400_naming_the_entry(team: Team, archive) -> None:  # type: ignore[no-untyped-def]
    answer = upload(team.editor, "broken", "model.zip", archive())
    assert answer.status_code == 400, answer.text
    assert "the zip archive is damaged" in answer.json()["detail"]


def test_weights_that_are_not_safetensors_are_refused_at_import_not_at_deployment(
    team: Team,
) -> None:
    header = b'{"wte": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
    cases = {
        "garbage": b"not safetensors at all",
        "truncated": struct.pack("<Q", len(header)) + header + bytes(8),
        "header not an object": struct.pack("<Q", 2) + b"[]",
    }
    for case, weights in cases.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("config.json", '{"model_type": "gpt2"}')
            archive.writestr("model.safetensors", weights)
        answer = upload(team.editor, "weights", "model.zip", buffer.getvalue())
        assert answer.status_code == 400, (case, answer.text)
        assert "model.safetensors is not a valid safetensors file" in answer.json()["detail"]


def test_an_import_path_that_is_a_pipe_or_socket_is_refused(
    team: Team, installation: Path, tmp_path: Path
) -> None:
    import socket

    imports = tmp_path / "imports"
    imports.mkdir()
    os.mkfifo(imports / "pipe")
    os.mkfifo(imports / "pipe.gguf")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(imports / "sock"))
    allow_imports_from(imports)
    try:
        for path in ("pipe", "pipe.gguf", "sock"):
            answer = team.editor.post("/api/v1/models/import", json={"name": "p", "path": path})
            assert answer.status_code == 400, answer.text
            assert "not a regular file or a folder" in answer.json()["detail"]
    finally:
        listener.close()
