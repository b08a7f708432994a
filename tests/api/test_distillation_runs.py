"""Logit distillation through the product: a registered version teaches a scratch student
(API → worker); the student's version names its teacher and the page compares them."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl, train_in_process, version_of_run
from tests.signed_in import HTML, sign_in

SHORT = {"max_steps": 3, "block_size": 32, "batch_size": 4, "learning_rate": 1e-3}


def test_a_version_teaches_a_scratch_student_and_the_page_compares_them(team: Team) -> None:
    corpus = team.editor.upload("corpus.jsonl", text_jsonl(60)).json()["id"]
    teacher_run = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": corpus, "base_model": "scratch-nano", "config": SHORT},
    )
    assert teacher_run.status_code == 201, teacher_run.text
    assert train_in_process(teacher_run.json()["id"]) == "succeeded"
    teacher = version_of_run(teacher_run.json()["id"])

    student_run = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": corpus,
            "base_model": "scratch-nano",
            "config": {**SHORT, "teacher": teacher["name"], "distill_temperature": 3.0},
        },
    )
    assert student_run.status_code == 201, student_run.text
    assert train_in_process(student_run.json()["id"]) == "succeeded"
    student = version_of_run(student_run.json()["id"])
    assert student["lineage"]["teacher_version_id"] == teacher["id"]
    assert student["lineage"]["teacher_run_id"] == teacher_run.json()["id"]

    events = team.editor.get(f"/api/v1/runs/{student_run.json()['id']}/events").text
    assert "distilling from a" in events and "tokenizer of the teacher" in events

    sign_in(team.editor)
    page = team.editor.client.get(f"/models/versions/{student['id']}", headers=HTML).text
    assert 'data-testid="teacher-compare"' in page and teacher["name"] in page


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"distill_weight": 0.9}, "distill_weight"),  # no teacher
        ({"teacher": "scratch-tiny"}, "teacher"),  # a size, not trained weights
        ({"teacher": "no-such-model"}, "model"),
    ],
)
def test_distillation_settings_are_refused_by_name(team: Team, config: dict, param: str) -> None:
    corpus = team.editor.upload("corpus.jsonl", text_jsonl(20)).json()["id"]
    response = team.editor.post(
        "/api/v1/runs", json={"dataset_id": corpus, "base_model": "scratch-nano", "config": config}
    )
    assert response.status_code == 400, response.text
    assert param in response.text


def test_a_student_trained_on_a_teachers_generated_answers_names_its_teacher(team: Team) -> None:
    """Sequence-level distillation: the teacher's answers are a dataset version made by the
    batch generation (recipe.generate names the model); the student's version names it too."""
    from app.db.models import DatasetVersion
    from app.db.session import session_scope

    corpus = team.editor.upload("corpus.jsonl", text_jsonl(40)).json()["id"]
    teacher_run = team.editor.post(
        "/api/v1/runs", json={"dataset_id": corpus, "base_model": "scratch-nano", "config": SHORT}
    ).json()
    assert train_in_process(teacher_run["id"]) == "succeeded"
    teacher = version_of_run(teacher_run["id"])
    with session_scope() as session:
        # What the "generate answers" batch leaves: a version whose recipe names the model.
        parent = session.query(DatasetVersion).filter_by(dataset_id=corpus).one()
        child = DatasetVersion(
            workspace_id=parent.workspace_id,
            dataset_id=corpus,
            version=2,
            parent_id=parent.id,
            schema=parent.schema,
            sha256=parent.sha256,
            storage_key=parent.storage_key,
            num_rows=parent.num_rows,
            size_bytes=parent.size_bytes,
            recipe={"generate": {"model": teacher["name"], "endpoint": "/v1/completions"}},
        )
        session.add(child)
        session.flush()
        child_id = child.id
    student_run = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": corpus,
            "dataset_version_id": child_id,
            "base_model": "scratch-nano",
            "config": SHORT,
        },
    ).json()
    assert train_in_process(student_run["id"]) == "succeeded"
    lineage = version_of_run(student_run["id"])["lineage"]
    assert lineage["teacher"] == teacher["name"] and lineage["distillation"] == "sequences"
    assert lineage["teacher_version_id"] == teacher["id"]
