"""A launch that no training worker can run is refused when it is made, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Team, text_jsonl


def launch(team: Team, dataset_id: int, precision: str):  # type: ignore[no-untyped-def]
    return team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset_id, "config": {"precision": precision, "max_steps": 2}},
    )


def test_fp16_is_refused_at_launch_when_no_training_worker_has_a_gpu(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import fleet

    # The embedded worker runs on this machine: its driver's GPU list is the answer.
    monkeypatch.setattr(fleet, "NVIDIA_GPUS", tmp_path / "no-driver")
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    refused = launch(team, dataset_id, "fp16")
    assert refused.status_code == 400, refused.text
    assert refused.json()["param"] == "precision"
    assert "needs a CUDA GPU" in refused.json()["detail"]
    assert team.editor.get("/api/v1/runs").json()["total"] == 0  # nothing half-launched
    assert launch(team, dataset_id, "bf16").status_code == 201


def test_fp16_is_accepted_where_the_worker_has_a_gpu(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import fleet

    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)  # a GPU that is not there, as the driver lists one
    monkeypatch.setattr(fleet, "NVIDIA_GPUS", gpus)
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    assert launch(team, dataset_id, "fp16").status_code == 201
