"""A tiny chat model fine-tuned here once per module, and runs that carry it as their model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Team, chat_jsonl, text_jsonl


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch GPT-2 trained with the project's engine on chat rows until it ends its replies
    with <|end|>: the run folder (checkpoints/checkpoint-N and final/). Trained once per session;
    tests copy it and never change it."""
    import torch

    from workers.engine import NullCallbacks, TrainConfig, train

    base = tmp_path_factory.mktemp("trained")
    data = base / "chat.jsonl"
    data.write_text(chat_jsonl(20))
    with torch.enable_grad():  # a loader elsewhere in the process may have turned it off
        result = train(
            TrainConfig(
                output_dir=base / "run",
                train_file=data,
                train_format="chat",
                learning_rate=3e-3,
                max_steps=60,
                block_size=64,
                batch_size=8,
            ),
            NullCallbacks(),
        )
    assert result.final_dir.is_dir()
    return base / "run"


def run_with_trained_model(team: Team, installation: Path, trained: Path) -> tuple[int, dict]:
    """A run of the editor's whose worker produced `trained` (its checkpoints and final model),
    finished as the training task finishes it; returns (run id, its registered final version)."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset = team.editor.upload("chat.jsonl", chat_jsonl(20)).json()
    run_id = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset["id"], "suffix": "adder", "base_model": "scratch-tiny"},
    ).json()["id"]
    run_dir = installation / "artifacts" / "runs" / str(run_id)
    shutil.copytree(trained, run_dir)
    with session_scope() as session:
        run_execution.claim(session=session, run_id=run_id, task_id="t")
        for checkpoint in sorted((run_dir / "checkpoints").iterdir()):
            step = int(checkpoint.name.split("-")[1])
            run_execution.record_checkpoint(
                session=session,
                run_id=run_id,
                step=step,
                storage_key=f"runs/{run_id}/checkpoints/{checkpoint.name}",
                metrics={"train_loss": 1.0},
            )
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=f"runs/{run_id}/final",
            final_step=60,
            final_metrics={"train_loss": 0.3},
        )
    versions = team.viewer.get("/api/v1/models").json()[0]["versions"]
    return run_id, versions[-1]


def dummy_run_with_version(team: Team, installation: Path) -> tuple[int, dict]:
    """A finished run whose model is a placeholder file (for registry bookkeeping only)."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run_id = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()["id"]
    run_dir = installation / "artifacts" / "runs" / str(run_id)
    for name in ("checkpoints/checkpoint-2", "final"):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "model.safetensors").write_bytes(f"weights of {name}".encode())
    with session_scope() as session:
        run_execution.claim(session=session, run_id=run_id, task_id="t")
        run_execution.record_checkpoint(
            session=session,
            run_id=run_id,
            step=2,
            storage_key=f"runs/{run_id}/checkpoints/checkpoint-2",
            metrics={"train_loss": 2.0},
        )
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=f"runs/{run_id}/final",
            final_step=4,
            final_metrics={"eval_loss": 1.5},
        )
    models = team.viewer.get("/api/v1/models").json()
    version = next(v for m in models for v in m["versions"] if v["run_id"] == run_id)
    return run_id, version
