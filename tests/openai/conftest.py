"""Fixtures for the OpenAI facade: the official `openai` client bound to the test app, uploads,
jobs, and a run finished the way the worker finishes one."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Persona, text_jsonl
from tests.openai.openai_schema import assert_schema

OpenAIFor = Callable[[Persona], openai.OpenAI]


@pytest.fixture
def openai_for(client: TestClient) -> OpenAIFor:
    """The official client for a persona, talking to the app in-process.

    FastAPI's TestClient is an httpx.Client, so it can be the openai client's transport. The
    workspace travels as the OpenAI "organization" (OpenAI-Organization header).
    """

    def make(persona: Persona) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://127.0.0.1/v1",
            api_key=persona.token,
            organization=str(persona.workspace_id),
            http_client=client,
            max_retries=0,
        )

    return make


def raw_json(raw: Any, schema: str) -> Any:
    """The JSON body of an openai `with_raw_response` call, checked against OpenAI's schema."""
    return assert_schema(raw.http_response.json(), schema)


def upload_file(persona: Persona, content: str | None = None, filename: str = "train.jsonl") -> str:
    data = (content if content is not None else text_jsonl()).encode()
    response = persona.post(
        "/v1/files",
        files={"file": (filename, io.BytesIO(data))},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    return str(assert_schema(response.json(), "OpenAIFile")["id"])


def create_job(persona: Persona, training_file: str, **fields: Any) -> dict[str, Any]:
    response = persona.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": training_file, **fields},
    )
    assert response.status_code == 200, response.text
    return dict(assert_schema(response.json(), "FineTuningJob"))


def run_id_of(job_id: str) -> int:
    return int(job_id.removeprefix("ftjob-"))


def set_run(run_id: int, **values: object) -> None:
    """Write columns of a run directly, for a state no public call leads to quickly (a run
    already running, an old start time)."""
    from sqlalchemy import update

    from app.db.models import Run
    from app.db.session import session_scope

    with session_scope() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**values))


def finish_like_the_worker(
    run_id: int,
    *,
    final_step: int = 10,
    checkpoint_steps: tuple[int, ...] = (5,),
    final_metrics: dict[str, float] | None = None,
) -> None:
    """Claim, checkpoint and finish a run through the worker's own service functions.

    No worker runs in these tests; the model folder only has to exist in the artifact store.
    """
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services import artifacts
    from app.services.runs import execution as run_execution

    final_key = f"runs/{run_id}/final"
    artifacts.resolve(final_key).mkdir(parents=True)
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="t")
        for step in checkpoint_steps:
            run_execution.record_checkpoint(
                session=session,
                run_id=run_id,
                step=step,
                storage_key=f"runs/{run_id}/checkpoint-{step}",
                metrics={"train_loss": 2.5, "grad_norm": 1.0},
            )
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=final_key,
            final_step=final_step,
            final_metrics=final_metrics or {"train_loss": 1.5, "eval_loss": 1.75},
        )


@pytest.fixture
def fine_tuned_model(team: Any) -> str:
    """The serving name of a succeeded run's registered model in the owner's workspace."""
    job = create_job(team.owner, upload_file(team.owner))
    finish_like_the_worker(run_id_of(job["id"]))
    response = team.owner.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert response.status_code == 200, response.text
    return str(response.json()["fine_tuned_model"])
