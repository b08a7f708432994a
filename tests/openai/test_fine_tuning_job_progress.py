"""OpenAI `fine_tuning.jobs` beyond create/list: LoRA and QLoRA through the `llmide` extension,
a consistent cancel, pause and resume, trained_tokens, result_files and estimated_finish.

No worker runs here: runs are moved and their metrics written through the worker's own service
functions.
"""

from __future__ import annotations

import csv
import io
from calendar import timegm
from datetime import timedelta

import openai
import pytest

from app.db.base import utcnow
from tests.conftest import Team
from tests.openai.conftest import (
    OpenAIFor,
    create_job,
    finish_like_the_worker,
    raw_json,
    run_id_of,
    set_run,
    upload_file,
)
from tests.openai.openai_schema import assert_openai_error, assert_schema


@pytest.fixture(autouse=True)
def _both_databases(backend: str) -> None:
    """Every test here runs on SQLite and on Postgres."""


def _claim(run_id: int) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="t")


def _report(run_id: int, points: list[tuple]) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with session_scope() as session:
        run_execution.write_metrics(session=session, run_id=run_id, points=points)


def _as_published(job: dict) -> dict:
    """OpenAI's published status enum lacks "paused", which its API answers: check the rest."""
    return assert_schema({**job, "status": "cancelled"}, "FineTuningJob") and job


def test_lora_and_qlora_are_chosen_with_the_llmide_extension_and_shown_on_the_job(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    training = upload_file(team.editor)

    raw = oa.fine_tuning.jobs.with_raw_response.create(
        model="scratch-tiny",
        training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        extra_body={"llmide": {"adapter": {"type": "lora", "r": 16, "alpha": 32}}},
    )
    job = raw_json(raw, "FineTuningJob")
    assert job["llmide"] == {"adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05}}
    assert job["hyperparameters"]["n_epochs"] == 2
    run = team.editor.get(f"/api/v1/runs/{run_id_of(job['id'])}").json()
    assert run["config"]["method"] == "lora"
    assert (run["config"]["lora_r"], run["config"]["lora_alpha"]) == (16, 32)

    full = create_job(team.editor, training)
    assert full["llmide"] == {
        "adapter": {"type": "full", "r": None, "alpha": None, "dropout": None}
    }
    assert (
        team.editor.get(f"/api/v1/runs/{run_id_of(full['id'])}").json()["config"]["method"]
        == "full"
    )


@pytest.mark.parametrize(
    ("llmide", "param"),
    [
        # The request's own validation names the field (as for hyperparameters above).
        ({"adapter": {"type": "dora"}}, "type"),
        ({"adapter": {"type": "lora", "r": 0}}, "r"),
        ({"adapters": {}}, "adapters"),
        ({"adapter": {"type": "full", "r": 8}}, "llmide.adapter.r"),
        ({"adapter": {"type": "qlora"}}, "llmide.adapter.type"),  # scratch-tiny has no base
    ],
)
def test_a_wrong_llmide_adapter_is_a_bad_request_naming_it(
    team: Team, llmide: dict, param: str
) -> None:
    response = team.owner.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": upload_file(team.owner), "llmide": llmide},
    )
    assert assert_openai_error(response, 400)["param"] == param
    assert team.owner.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_cancelling_a_running_job_answers_cancelled_and_every_later_read_agrees(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    job = create_job(team.editor, upload_file(team.editor))
    _claim(run_id_of(job["id"]))
    assert oa.fine_tuning.jobs.retrieve(job["id"]).status == "running"

    cancelled = raw_json(oa.fine_tuning.jobs.with_raw_response.cancel(job["id"]), "FineTuningJob")
    assert cancelled["status"] == "cancelled"
    assert cancelled["estimated_finish"] is None
    # The worker has not stopped yet, but nothing says "running" again.
    assert oa.fine_tuning.jobs.retrieve(job["id"]).status == "cancelled"
    assert [j.status for j in oa.fine_tuning.jobs.list()] == ["cancelled"]


def test_pause_stops_a_job_and_resume_queues_it_again(team: Team, openai_for: OpenAIFor) -> None:
    oa = openai_for(team.editor)
    job = create_job(team.editor, upload_file(team.editor))
    run_id = run_id_of(job["id"])
    _claim(run_id)

    paused = _as_published(
        oa.fine_tuning.jobs.with_raw_response.pause(job["id"]).http_response.json()
    )
    assert paused["status"] == "paused"
    assert oa.fine_tuning.jobs.retrieve(job["id"]).status == "paused"
    # The worker is still stopping: resuming now is refused, not lost.
    with pytest.raises(openai.ConflictError, match="still stopping"):
        oa.fine_tuning.jobs.resume(job["id"])

    set_run(run_id, status="cancelled", finished_at=utcnow())  # the worker stopped
    assert oa.fine_tuning.jobs.retrieve(job["id"]).status == "paused"
    resumed = raw_json(oa.fine_tuning.jobs.with_raw_response.resume(job["id"]), "FineTuningJob")
    assert resumed["status"] == "queued"
    assert resumed["finished_at"] is None
    events = [e.message for e in oa.fine_tuning.jobs.list_events(job["id"], limit=50)]
    assert any(m.startswith("pause requested") for m in events)
    assert any(m.startswith("resume requested") for m in events)

    with pytest.raises(openai.ConflictError, match="only a paused job"):
        oa.fine_tuning.jobs.resume(job["id"])


def test_pausing_a_queued_job_pauses_it_at_once_and_cancel_makes_it_final(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    job = create_job(team.editor, upload_file(team.editor))
    assert oa.fine_tuning.jobs.pause(job["id"]).status == "paused"
    assert oa.fine_tuning.jobs.pause(job["id"]).status == "paused"  # again: no change

    assert (
        raw_json(oa.fine_tuning.jobs.with_raw_response.cancel(job["id"]), "FineTuningJob")["status"]
        == "cancelled"
    )
    with pytest.raises(openai.ConflictError):
        oa.fine_tuning.jobs.resume(job["id"])
    with pytest.raises(openai.ConflictError):
        oa.fine_tuning.jobs.pause(job["id"])


def test_a_viewer_cannot_pause_or_resume(team: Team, openai_for: OpenAIFor) -> None:
    job = create_job(team.owner, upload_file(team.owner))
    viewer = openai_for(team.viewer)
    with pytest.raises(openai.PermissionDeniedError):
        viewer.fine_tuning.jobs.pause(job["id"])
    with pytest.raises(openai.PermissionDeniedError):
        viewer.fine_tuning.jobs.resume(job["id"])
    assert_openai_error(team.outsider.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 404)


def test_a_finished_job_has_trained_tokens_and_a_step_metrics_csv_result_file(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    job = create_job(team.owner, upload_file(team.owner))
    run_id = run_id_of(job["id"])
    _report(
        run_id,
        [
            (1, "train_loss", 3.0),
            (1, "learning_rate", 0.001),
            (1, "trained_tokens", 512.0),
            (2, "train_loss", 2.5),
            (2, "trained_tokens", 1024.0),
            (2, "eval_loss", 2.75),
        ],
    )
    assert oa.fine_tuning.jobs.retrieve(job["id"]).trained_tokens is None  # not finished yet
    assert oa.fine_tuning.jobs.retrieve(job["id"]).result_files == []

    finish_like_the_worker(run_id, final_step=2, checkpoint_steps=())
    finished = raw_json(oa.fine_tuning.jobs.with_raw_response.retrieve(job["id"]), "FineTuningJob")
    assert finished["trained_tokens"] == 1024
    (results_id,) = finished["result_files"]

    file = raw_json(oa.files.with_raw_response.retrieve(results_id), "OpenAIFile")
    assert file["purpose"] == "fine-tune-results"
    assert file["filename"].endswith(".csv")
    content = oa.files.content(results_id).read()
    assert file["bytes"] == len(content)
    rows = list(csv.DictReader(io.StringIO(content.decode())))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert rows[0]["train_loss"] == "3.0" and rows[0]["valid_loss"] == ""
    assert rows[1]["valid_loss"] == "2.75" and rows[1]["trained_tokens"] == "1024"
    assert set(rows[0]) >= {
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    }

    with pytest.raises(openai.BadRequestError, match="results of a fine-tuning job"):
        oa.files.delete(results_id)
    assert_openai_error(team.outsider.get(f"/v1/files/{results_id}"), 404)
    assert_openai_error(team.owner.get("/v1/files/file-results-999999"), 404)


def test_estimated_finish_comes_from_the_measured_step_rate(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    job = create_job(team.owner, upload_file(team.owner))
    run_id = run_id_of(job["id"])
    _claim(run_id)
    # Loading took ten minutes before step 1; then a step every 2 s: 100 steps in all.
    start = utcnow()
    set_run(run_id, started_at=start - timedelta(minutes=10), step=1, total_steps=100)
    _report(run_id, [(1, "train_loss", 3.0, start)])
    assert oa.fine_tuning.jobs.retrieve(job["id"]).estimated_finish is None  # no pace yet

    _report(
        run_id,
        [(s, "train_loss", 3.0, start + timedelta(seconds=2 * (s - 1))) for s in range(2, 11)],
    )
    set_run(run_id, step=10)
    estimated = oa.fine_tuning.jobs.retrieve(job["id"]).estimated_finish
    expected = start + timedelta(seconds=2 * 99)  # step 10 at +18 s, 90 steps of 2 s to go
    assert estimated is not None
    assert abs(estimated - timegm(expected.utctimetuple())) <= 1


def test_an_intermediate_checkpoint_answers_chat_by_its_listed_model_id(
    team: Team, openai_for: OpenAIFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import artifacts
    from app.services.serving import inference_client

    asked: list[tuple[str, str]] = []

    async def generate(name: str, path: str, **params: object) -> dict:
        asked.append((name, path))
        return {"text": "hi", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}

    monkeypatch.setattr(inference_client, "generate", generate)
    oa = openai_for(team.owner)
    job = create_job(team.owner, upload_file(team.owner))
    run_id = run_id_of(job["id"])
    finish_like_the_worker(run_id, checkpoint_steps=(5,))
    artifacts.resolve(f"runs/{run_id}/checkpoint-5").mkdir(parents=True)
    listed = {
        c.step_number: c.fine_tuned_model_checkpoint
        for c in oa.fine_tuning.jobs.checkpoints.list(job["id"])
    }
    assert listed[5].endswith(":ckpt-step-5")

    reply = oa.chat.completions.create(
        model=listed[5], messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content == "hi" and reply.model == listed[5]
    assert asked[-1][1] == str(artifacts.resolve(f"runs/{run_id}/checkpoint-5"))
    # The final checkpoint is served by its registered version's own name.
    assert (
        oa.chat.completions.create(
            model=listed[10], messages=[{"role": "user", "content": "hello"}]
        )
        .choices[0]
        .message.content
        == "hi"
    )

    for wrong in (
        listed[5].replace(":ckpt-step-5", ":ckpt-step-6"),
        listed[5].replace(f"run-{run_id}", "run-999999"),
    ):
        with pytest.raises(openai.NotFoundError):
            oa.chat.completions.create(model=wrong, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):  # another workspace's checkpoint
        openai_for(team.outsider).chat.completions.create(
            model=listed[5], messages=[{"role": "user", "content": "x"}]
        )
