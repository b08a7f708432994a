"""OpenAI `fine_tuning.jobs` on runs: create, retrieve, list, cancel, checkpoints, status mapping.

No worker runs here: a created job stays queued; a finished one is finished through the
worker's own service functions.
"""

from __future__ import annotations

import openai
import pytest

from app.services.runs.config import DEFAULT_LEARNING_RATE
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


def test_jobs_create_through_the_openai_package_queues_a_run_with_the_hyperparameters(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    training = upload_file(team.editor)
    validation = upload_file(team.editor, filename="valid.jsonl")

    raw = oa.fine_tuning.jobs.with_raw_response.create(
        model="scratch-tiny",
        training_file=training,
        validation_file=validation,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2},
        suffix="my-model",
        seed=7,
    )
    job = raw_json(raw, "FineTuningJob")
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["model"] == "scratch-tiny"
    assert job["training_file"] == training
    assert job["validation_file"] == validation
    assert job["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 4,
        "learning_rate_multiplier": 2.0,
    }
    assert job["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": job["hyperparameters"]},
    }
    assert job["seed"] == 7
    assert job["fine_tuned_model"] is None
    assert job["finished_at"] is None
    assert job["error"] is None
    assert job["result_files"] == []

    run = team.editor.get(f"/api/v1/runs/{run_id_of(job['id'])}").json()
    assert run["status"] == "queued"
    assert run["suffix"] == "my-model"
    assert run["config"]["epochs"] == 3
    assert run["config"]["batch_size"] == 4
    assert run["config"]["learning_rate"] == pytest.approx(2 * DEFAULT_LEARNING_RATE)
    assert run["config"]["seed"] == 7

    retrieved = oa.fine_tuning.jobs.retrieve(job["id"])
    assert retrieved.status == "queued"
    assert retrieved.hyperparameters.n_epochs == 3


def test_jobs_take_hyperparameters_from_method_supervised_and_auto_keeps_defaults(
    team: Team, openai_for: OpenAIFor
) -> None:
    training = upload_file(team.owner)
    job = openai_for(team.owner).fine_tuning.jobs.create(
        model="scratch-tiny",
        training_file=training,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": "auto",
                    "learning_rate_multiplier": 0.5,
                }
            },
        },
    )
    assert job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)
    run = team.owner.get(f"/api/v1/runs/{run_id_of(job.id)}").json()
    assert run["config"]["learning_rate"] == pytest.approx(0.5 * DEFAULT_LEARNING_RATE)

    defaults = create_job(team.owner, training, hyperparameters={"n_epochs": "auto"})
    assert defaults["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "gpt-4o-mini"}, "model"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"hyperparameters": {"n_epochs": 0}}, "n_epochs"),
        (
            {"hyperparameters": {"learning_rate_multiplier": 5000}},
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"suffix": "not allowed!"}, "suffix"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        (
            {
                "hyperparameters": {"n_epochs": 2},
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 3}},
                },
            },
            "hyperparameters",
        ),
    ],
)
def test_jobs_with_invalid_parameters_are_bad_requests_naming_the_param(
    team: Team, fields: dict, param: str
) -> None:
    training = upload_file(team.owner)
    response = team.owner.post(
        "/v1/fine_tuning/jobs",
        json={"model": "scratch-tiny", "training_file": training, **fields},
    )
    assert assert_openai_error(response, 400)["param"] == param
    assert team.owner.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_jobs_with_an_unknown_training_or_validation_file_are_not_found(team: Team) -> None:
    training = upload_file(team.owner)
    for fields, param in (
        ({"training_file": "file-404"}, "training_file"),
        ({"training_file": training, "validation_file": "file-abc"}, "validation_file"),
        ({"training_file": upload_file(team.outsider)}, "training_file"),
    ):
        response = team.owner.post("/v1/fine_tuning/jobs", json={"model": "scratch-tiny", **fields})
        assert assert_openai_error(response, 404)["param"] == param


def test_jobs_list_newest_first_with_after_limit_and_has_more(
    team: Team, openai_for: OpenAIFor
) -> None:
    training = upload_file(team.owner)
    ids = [create_job(team.owner, training)["id"] for _ in range(3)][::-1]

    first = assert_schema(
        team.owner.get("/v1/fine_tuning/jobs?limit=2").json(), "ListPaginatedFineTuningJobsResponse"
    )
    assert [j["id"] for j in first["data"]] == ids[:2]
    assert first["has_more"] is True
    rest = team.owner.get(f"/v1/fine_tuning/jobs?limit=2&after={ids[1]}").json()
    assert_schema(rest, "ListPaginatedFineTuningJobsResponse")
    assert [j["id"] for j in rest["data"]] == ids[2:]
    assert rest["has_more"] is False

    oa = openai_for(team.owner)
    assert [j.id for j in oa.fine_tuning.jobs.list(limit=1)] == ids
    assert [j.id for j in oa.fine_tuning.jobs.list(limit=5).data] == ids
    assert team.outsider.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert_openai_error(team.owner.get("/v1/fine_tuning/jobs?after=nonsense"), 400)


def test_jobs_cancel_moves_a_queued_job_to_cancelled_once(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.editor)
    job = create_job(team.editor, upload_file(team.editor))

    cancelled = raw_json(oa.fine_tuning.jobs.with_raw_response.cancel(job["id"]), "FineTuningJob")
    assert cancelled["status"] == "cancelled"
    assert isinstance(cancelled["finished_at"], int)
    assert oa.fine_tuning.jobs.retrieve(job["id"]).status == "cancelled"

    with pytest.raises(openai.ConflictError, match="already cancelled"):
        oa.fine_tuning.jobs.cancel(job["id"])
    assert_openai_error(team.editor.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409)


def test_viewer_can_read_jobs_but_not_create_or_cancel_them(
    team: Team, openai_for: OpenAIFor
) -> None:
    training = upload_file(team.owner)
    job = create_job(team.owner, training)
    viewer = openai_for(team.viewer)

    assert viewer.fine_tuning.jobs.retrieve(job["id"]).id == job["id"]
    with pytest.raises(openai.PermissionDeniedError):
        viewer.fine_tuning.jobs.create(model="scratch-tiny", training_file=training)
    with pytest.raises(openai.PermissionDeniedError):
        viewer.fine_tuning.jobs.cancel(job["id"])
    error = assert_openai_error(
        team.viewer.post(
            "/v1/fine_tuning/jobs", json={"model": "scratch-tiny", "training_file": training}
        ),
        403,
    )
    assert error["type"] == "permission_error"


@pytest.mark.parametrize("suffix", ["", "/cancel", "/events", "/checkpoints"])
def test_unknown_malformed_and_other_workspaces_jobs_are_not_found(
    team: Team, openai_for: OpenAIFor, suffix: str
) -> None:
    job = create_job(team.owner, upload_file(team.owner))
    call = team.outsider.post if suffix == "/cancel" else team.outsider.get
    for job_id in (job["id"], "ftjob-abc", "ftjob-424242", "ft-AF1WoRqd3aJAHsqc9NY7iL8F"):
        assert_openai_error(call(f"/v1/fine_tuning/jobs/{job_id}{suffix}"), 404)
    with pytest.raises(openai.NotFoundError):
        openai_for(team.outsider).fine_tuning.jobs.retrieve(job["id"])
    assert team.owner.get(f"/v1/fine_tuning/jobs/{job['id']}").status_code == 200


def test_a_succeeded_job_names_its_registered_model_and_lists_its_checkpoints(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.owner)
    job = create_job(team.owner, upload_file(team.owner), suffix="tiny")
    assert oa.fine_tuning.jobs.checkpoints.list(job["id"]).data == []
    empty = team.owner.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert assert_schema(empty, "ListFineTuningJobCheckpointsResponse")["has_more"] is False

    finish_like_the_worker(run_id_of(job["id"]), checkpoint_steps=(5,), final_step=10)

    done = raw_json(oa.fine_tuning.jobs.with_raw_response.retrieve(job["id"]), "FineTuningJob")
    assert done["status"] == "succeeded"
    assert done["fine_tuned_model"].startswith("ft:scratch-tiny:")
    assert done["fine_tuned_model"].endswith(f":tiny:run-{run_id_of(job['id'])}")
    assert isinstance(done["finished_at"], int)
    assert done["estimated_finish"] is None

    raw = oa.fine_tuning.jobs.checkpoints.with_raw_response.list(job["id"])
    page = raw_json(raw, "ListFineTuningJobCheckpointsResponse")
    assert [c["step_number"] for c in page["data"]] == [10, 5]
    final, earlier = page["data"]
    assert final["fine_tuned_model_checkpoint"] == done["fine_tuned_model"]
    assert earlier["fine_tuned_model_checkpoint"] == done["fine_tuned_model"] + ":ckpt-step-5"
    assert final["metrics"] == {
        "step": 10.0,
        "train_loss": 1.5,
        "valid_loss": 1.75,
        "full_valid_loss": 1.75,
    }
    assert final["fine_tuning_job_id"] == job["id"]
    assert (page["first_id"], page["last_id"]) == (final["id"], earlier["id"])

    second = team.owner.get(
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints?limit=1&after={final['id']}"
    ).json()
    assert_schema(second, "ListFineTuningJobCheckpointsResponse")
    assert [c["id"] for c in second["data"]] == [earlier["id"]]
    assert second["has_more"] is False

    model = oa.models.retrieve(done["fine_tuned_model"])
    assert model.owned_by == team.owner.get("/api/v1/me").json()["workspace"]["slug"]


def test_job_status_maps_failed_to_an_error_object_and_interrupted_to_running(
    team: Team,
) -> None:
    training = upload_file(team.owner)
    failed = create_job(team.owner, training)
    set_run(run_id_of(failed["id"]), status="failed", error="CUDA out of memory")
    body = team.owner.get(f"/v1/fine_tuning/jobs/{failed['id']}").json()
    assert assert_schema(body, "FineTuningJob")["status"] == "failed"
    assert body["error"] == {
        "code": "training_failed",
        "message": "CUDA out of memory",
        "param": None,
    }

    interrupted = create_job(team.owner, training)
    set_run(run_id_of(interrupted["id"]), status="interrupted")
    body = team.owner.get(f"/v1/fine_tuning/jobs/{interrupted['id']}").json()
    assert assert_schema(body, "FineTuningJob")["status"] == "running"
    assert body["error"] is None
