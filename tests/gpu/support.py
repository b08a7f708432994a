"""What the GPU tests share: the real product on this machine and an API client for it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import PASSWORD, wait_for

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Product:
    server: Server
    api: httpx.Client

    def upload(self, name: str, content: bytes) -> int:
        reply = self.api.post("/api/v1/datasets", files={"file": (name, content)})
        assert reply.status_code in (200, 201), reply.text
        return int(reply.json()["id"])

    def launch(self, dataset_id: int, base_model: str = "scratch-tiny", **config: Any) -> int:
        reply = self.api.post(
            "/api/v1/runs",
            json={"dataset_id": dataset_id, "base_model": base_model, "config": config},
        )
        assert reply.status_code == 201, reply.text
        return int(reply.json()["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/runs/{run_id}").json())

    def finished(self, run_id: int, timeout: float) -> dict[str, Any]:
        return dict(
            wait_for(
                lambda: (r := self.run(run_id))["status"] in TERMINAL and r,
                timeout=timeout,
                what=f"run {run_id} to finish",
                server=self.server,
            )
        )

    def events(self, run_id: int) -> list[str]:
        return [e["message"] for e in self.api.get(f"/api/v1/runs/{run_id}/events").json()]

    def metric_points(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.api.get(f"/api/v1/runs/{run_id}/metrics").json())


@contextmanager
def product(data_dir: Path, **extra_env: str) -> Iterator[Product]:
    """`llmide serve` (web, Celery worker, inference) with an admin's API token."""
    with running_server(data_dir, **extra_env) as server:
        server.cli("user", "create", "gpu@example.com", "--password", PASSWORD, "--admin")
        token = server.cli("token", "create", "gpu@example.com").strip()
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as api:
            yield Product(server, api)


def varied_text(rows: int, seed: int = 0, words_per_row: int = 40) -> bytes:
    """JSONL rows of random letter strings: a byte-level BPE tokenizer compresses them little,
    so the token count (and the tokenizer's vocabulary) grows with the bytes uploaded."""
    import json

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(rows):
        words = ("".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(words_per_row))
        lines.append(json.dumps({"text": " ".join(words)}))
    return ("\n".join(lines) + "\n").encode()
