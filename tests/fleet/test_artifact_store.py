"""The artifact store: the local folder and S3-compatible storage behave alike, by key, streamed,
multipart for big files, checked end to end; folders travel whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import NotFound, ValidationFailed
from app.services import artifacts
from app.services.artifact_store import ArtifactCorrupt, LocalStore, S3Store, get_store
from tests.fleet.conftest import S3Server, host

MIB = 1024 * 1024


def write_random(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(left, MIB))
            digest.update(chunk)
            handle.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    return s3_server.env(s3_server.new_bucket(), "fleet/test")


@pytest.fixture(params=["local", "s3"])
def store_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    env = request.getfixturevalue("s3_env") if request.param == "s3" else {}
    with host(tmp_path / "host", env):
        yield request.param


def test_both_stores_round_trip_a_file_by_key_with_its_sha256(store_host: str, tmp_path: Path):
    store = get_store()
    assert isinstance(store, S3Store if store_host == "s3" else LocalStore)
    source = tmp_path / "in.bin"
    digest = write_random(source, 300_000)

    stored = store.put_file("datasets/versions/abc.jsonl", source)
    assert (stored.size, stored.sha256) == (300_000, digest)
    assert store.head("datasets/versions/abc.jsonl").size == 300_000  # type: ignore[union-attr]
    assert store.head("datasets/versions/other.jsonl") is None

    got = store.get_file("datasets/versions/abc.jsonl", tmp_path / "out" / "abc.jsonl")
    assert got.size == 300_000
    assert hashlib.sha256((tmp_path / "out" / "abc.jsonl").read_bytes()).hexdigest() == digest
    assert b"".join(store.open("datasets/versions/abc.jsonl")) == source.read_bytes()
    with pytest.raises(NotFound):
        store.get_file("datasets/versions/missing.jsonl", tmp_path / "out" / "missing")
    assert not (tmp_path / "out" / "missing").exists()


def test_both_stores_list_and_delete_a_folder_prefix(store_host: str, tmp_path: Path):
    store = get_store()
    for name in ("a.bin", "b.bin", "sub/c.bin"):
        store.put_bytes(f"runs/3/final/{name}", b"x")
    store.put_bytes("runs/30/final/a.bin", b"y")  # a sibling whose key only starts alike

    assert sorted(o.key for o in store.list("runs/3/final/")) == [
        "runs/3/final/a.bin",
        "runs/3/final/b.bin",
        "runs/3/final/sub/c.bin",
    ]
    store.delete_prefix("runs/3")
    assert list(store.list("runs/3/")) == []
    assert [o.key for o in store.list("runs/30/")] == ["runs/30/final/a.bin"]


def test_a_big_file_goes_up_in_parts_and_is_never_held_in_memory_whole(
    s3_server: S3Server, tmp_path: Path
):
    env = s3_server.env(s3_server.new_bucket()) | {
        "LLMIDE_ARTIFACT_MULTIPART_THRESHOLD_MB": "5",
        "LLMIDE_ARTIFACT_MULTIPART_CHUNK_MB": "5",
        "LLMIDE_ARTIFACT_TRANSFER_THREADS": "1",
    }
    source = tmp_path / "model.safetensors"
    digest = write_random(source, 48 * MIB)
    with host(tmp_path / "host", env):
        store = get_store()
        assert isinstance(store, S3Store)
        tracemalloc.start()
        try:
            store.put_file("runs/1/final/model.safetensors", source)
            store.get_file("runs/1/final/model.safetensors", tmp_path / "back.safetensors")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Ten 5 MiB parts: S3 names a multipart object's ETag "<md5 of md5s>-<parts>".
    head = s3_server.client().head_object(
        Bucket=env["LLMIDE_ARTIFACT_URL"][5:], Key="runs/1/final/model.safetensors"
    )
    assert head["ETag"].strip('"').endswith("-10")
    assert head["Metadata"]["sha256"] == digest
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB for a 48 MiB file"
    assert hashlib.sha256((tmp_path / "back.safetensors").read_bytes()).hexdigest() == digest


def test_a_download_whose_bytes_differ_from_the_upload_is_refused_and_not_kept(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
):
    bucket, prefix = s3_env["LLMIDE_ARTIFACT_URL"][5:].split("/", 1)
    with host(tmp_path / "host", s3_env):
        store = get_store()
        source = tmp_path / "in.jsonl"
        source.write_text('{"text": "hello"}\n')
        stored = store.put_file("datasets/versions/x.jsonl", source)
        # Bit rot, or a copy made behind our back: the bytes change, the recorded hash stays.
        s3_server.client().put_object(
            Bucket=bucket,
            Key=f"{prefix}/datasets/versions/x.jsonl",
            Body=b'{"text": "HELLO"}\n',
            Metadata={"sha256": stored.sha256 or ""},
        )
        with pytest.raises(ArtifactCorrupt):
            store.get_file("datasets/versions/x.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert list((tmp_path).glob(".get-*")) == []


def test_keys_that_leave_the_store_are_refused_before_any_transfer(store_host: str, tmp_path: Path):
    for key in ("../etc/passwd", "runs/../../x", "/abs/path", "runs/1/%2e%2e/x", ""):
        with pytest.raises(ValidationFailed):
            artifacts.existing(key)
        with pytest.raises(ValidationFailed):
            artifacts.publish(key)
        with pytest.raises(ValidationFailed):
            artifacts.delete(key)


def test_a_folder_published_on_one_host_is_fetched_whole_on_another(
    s3_env: dict[str, str], tmp_path: Path
):
    with host(tmp_path / "a", s3_env):
        folder = artifacts.resolve("runs/5/checkpoints/checkpoint-4")
        write_random(folder / "model.safetensors", 200_000)
        (folder / "trainer_state.json").write_text('{"global_step": 4}')
        write_random(folder / "nested" / "rng.bin", 1000)
        artifacts.publish("runs/5/checkpoints/checkpoint-4")
        expected = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file()
        }
    with host(tmp_path / "b", s3_env):
        assert not artifacts.resolve("runs/5/checkpoints/checkpoint-4").exists()
        assert artifacts.read_member("runs/5/checkpoints/checkpoint-4", "trainer_state.json") == (
            b'{"global_step": 4}'
        )
        assert not artifacts.resolve("runs/5/checkpoints/checkpoint-4").exists()  # one file read
        fetched = artifacts.existing("runs/5/checkpoints/checkpoint-4")
        got = {
            p.relative_to(fetched).as_posix(): p.read_bytes()
            for p in fetched.rglob("*")
            if p.is_file()
        }
        assert got == expected
        assert not any(p.name.startswith(".fetch-") for p in fetched.parent.iterdir())


def test_a_folder_without_its_manifest_is_not_there_yet(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
):
    """An upload cut short (the host died half way) never becomes a checkpoint elsewhere."""
    with host(tmp_path / "a", s3_env):
        store = get_store()
        store.put_bytes("runs/6/checkpoints/checkpoint-2/model.safetensors", b"half")
    with host(tmp_path / "b", s3_env):
        with pytest.raises(NotFound):
            artifacts.existing("runs/6/checkpoints/checkpoint-2")
        assert not artifacts.resolve("runs/6/checkpoints/checkpoint-2").exists()
        with pytest.raises(NotFound):
            artifacts.ensure_present("runs/6/checkpoints/checkpoint-2")


def test_files_committed_on_one_host_are_found_and_deleted_everywhere(
    s3_env: dict[str, str], tmp_path: Path
):
    with host(tmp_path / "web", s3_env):
        fd, tmp = artifacts.temp_file(".jsonl")
        os.write(fd, b'{"text": "a"}\n')
        os.close(fd)
        artifacts.commit_file(tmp, "datasets/versions/d1.jsonl")
    with host(tmp_path / "worker", s3_env):
        artifacts.ensure_present("datasets/versions/d1.jsonl")
        assert artifacts.existing("datasets/versions/d1.jsonl").read_bytes() == b'{"text": "a"}\n'
        artifacts.delete("datasets/versions/d1.jsonl")
    with host(tmp_path / "web", s3_env):
        # This host still has its copy; the shared store does not, so no other host finds it.
        assert get_store().head("datasets/versions/d1.jsonl") is None


def test_the_local_cache_evicts_the_least_recently_used_unpinned_versions(
    s3_env: dict[str, str], tmp_path: Path
):
    with host(tmp_path / "trainer", s3_env):
        for n in (1, 2, 3):
            write_random(artifacts.resolve(f"runs/{n}/final") / "model.safetensors", 100_000)
            artifacts.publish(f"runs/{n}/final")
    with host(tmp_path / "inference", s3_env):
        cache = artifacts.LocalCache(max_bytes=250_000)  # room for two versions
        cache.get("runs/1/final")
        cache.get("runs/2/final")
        cache.get("runs/1/final")  # 1 used again: 2 is now the oldest
        cache.get("runs/3/final")
        present = {n for n in (1, 2, 3) if artifacts.resolve(f"runs/{n}/final").exists()}
        assert present == {1, 3}
        # A version that is loaded now is never evicted, however old.
        cache.get("runs/2/final", pinned={"runs/1/final", "runs/3/final"})
        present = {n for n in (1, 2, 3) if artifacts.resolve(f"runs/{n}/final").exists()}
        assert present == {1, 2, 3}
        index = json.loads((artifacts.root() / cache.INDEX).read_text())
        assert set(index) == {"runs/1/final", "runs/2/final", "runs/3/final"}


def test_the_local_folder_store_never_evicts_anything(tmp_path: Path):
    with host(tmp_path / "embedded", {}):
        for n in (1, 2):
            write_random(artifacts.resolve(f"runs/{n}/final") / "model.safetensors", 100_000)
        cache = artifacts.LocalCache(max_bytes=1)
        cache.get("runs/1/final")
        cache.get("runs/2/final")
        assert artifacts.resolve("runs/1/final").exists()
        assert artifacts.resolve("runs/2/final").exists()


def test_an_artifact_url_that_is_not_s3_is_refused_by_name(tmp_path: Path):
    from pydantic import ValidationError

    from app.core.settings import Settings

    for bad in ("http://bucket/prefix", "s3://", "bucket/prefix"):
        with pytest.raises(ValidationError, match="LLMIDE_ARTIFACT_URL"):
            Settings(data_dir=tmp_path, artifact_url=bad)


def test_the_web_tells_a_classifier_trained_on_another_host_by_its_config_alone(
    s3_env: dict[str, str], tmp_path: Path
):
    from types import SimpleNamespace

    from app.services.registry import kind as model_kind

    with host(tmp_path / "worker", s3_env):
        folder = artifacts.resolve("runs/9/final")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
        write_random(folder / "model.safetensors", 50_000)
        artifacts.publish("runs/9/final")
    with host(tmp_path / "web", s3_env):
        version: Any = SimpleNamespace(storage_key="runs/9/final")
        assert model_kind.is_classifier(version)
        assert not artifacts.resolve("runs/9/final").exists()  # nothing but config.json read
        assert not model_kind.is_classifier(SimpleNamespace(storage_key="runs/10/final"))  # type: ignore[arg-type]


def test_a_version_trained_elsewhere_is_checked_as_a_base_from_its_config_alone(
    s3_env: dict[str, str], tmp_path: Path
):
    """Launching SFT → DPO on the web checks the base version without fetching its weights;
    the worker that trains fetches the folder (workers/tasks._engine_config)."""
    from types import SimpleNamespace

    from app.services.registry import version_bases

    with host(tmp_path / "worker", s3_env):
        folder = artifacts.resolve("runs/11/final")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 64}'
        )
        write_random(folder / "model.safetensors", 50_000)
        artifacts.publish("runs/11/final")
    with host(tmp_path / "web", s3_env):
        version: Any = SimpleNamespace(storage_key="runs/11/final", serving_name="sft:v1")
        base = version_bases.as_base(version)
        assert (base.context_length, base.architecture) == (64, "gpt2")
        assert not artifacts.resolve("runs/11/final").exists()
        missing: Any = SimpleNamespace(storage_key="runs/12/final", serving_name="gone:v1")
        with pytest.raises(ValidationFailed, match="gone:v1"):
            version_bases.as_base(missing)
