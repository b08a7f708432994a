"""What an installation stores (its database, the broker, datasets, checkpoints, final models)
is readable by its own user only: folders 0700, files 0600, from a fresh start of the real
product through a finished training run."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import running_server
from tests.e2e.test_full_path import PASSWORD, corpus

pytestmark = pytest.mark.e2e


def open_to_others(root: Path) -> list[str]:
    """Every path under `root` (itself included) that grants anything to group or others."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found.append(f"{oct(mode & 0o777)} {path.relative_to(root.parent)}")
    return found


def test_the_database_and_every_artifact_are_private_to_the_installations_user(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # as a person would make it: readable by everyone
    with running_server(data_dir) as server:
        server.cli("user", "create", "ada@example.com", "--password", PASSWORD)
        token = server.cli("token", "create", "ada@example.com").strip()
        api = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        dataset = api.post("/api/v1/datasets", files={"file": ("c.jsonl", corpus(60))})
        assert dataset.status_code == 201, dataset.text
        run = api.post(
            "/api/v1/runs",
            json={
                "dataset_id": dataset.json()["id"],
                "config": {"max_steps": 4, "block_size": 16, "save_steps": 2},
            },
        )
        assert run.status_code == 201, run.text
        deadline = time.monotonic() + 240
        while (status := api.get(f"/api/v1/runs/{run.json()['id']}").json()["status"]) not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        assert status == "succeeded", server.log_tail()
        stored = {p.name for p in data_dir.rglob("*")}
        assert {"llmide.db", "broker.db", "model.safetensors"} <= stored, sorted(stored)
        assert open_to_others(data_dir) == []
