"""What an evaluation reads: the chosen dataset version of this workspace (its test split when it
has one), and prompts that fit the model's context, refused at submission otherwise (issue 18)."""

from __future__ import annotations

from pathlib import Path

from tests.api.test_dataset_prep_api import prepare_via_api, version_ids
from tests.conftest import Team, chat_jsonl
from tests.registry.conftest import run_with_trained_model


def evaluate_url(version: dict) -> str:
    return f"/api/v1/model-versions/{version['id']}/evaluations"


def test_another_workspaces_dataset_version_is_a_404_and_anothers_datasets_a_400(
    team: Team, installation: Path, trained: Path
) -> None:
    _, final = run_with_trained_model(team, installation, trained)
    ours = team.editor.upload("ours.jsonl", chat_jsonl(6)).json()["id"]
    other = team.editor.upload("other.jsonl", chat_jsonl(7)).json()["id"]
    theirs = team.outsider.upload("theirs.jsonl", chat_jsonl(8)).json()["id"]
    [their_version] = version_ids(theirs)
    [other_version] = version_ids(other)
    body = {"dataset_id": ours, "dataset_version_id": their_version}
    answer = team.editor.post(evaluate_url(final), json=body)
    assert answer.status_code == 404, answer.text
    body["dataset_version_id"] = other_version
    answer = team.editor.post(evaluate_url(final), json=body)
    assert answer.status_code == 400 and answer.json()["param"] == "dataset_version_id"


def test_an_evaluation_reads_the_chosen_versions_test_split(
    team: Team, installation: Path, trained: Path
) -> None:
    from workers.prep_tasks import prepare
    from workers.registry_tasks import evaluate_version

    _, final = run_with_trained_model(team, installation, trained)
    dataset_id = team.editor.upload("heldout.jsonl", chat_jsonl(20)).json()["id"]
    [v1] = version_ids(dataset_id)
    v2 = prepare_via_api(team, dataset_id, v1, {"split": {"validation": 0.0, "test": 0.25}})
    assert prepare(v2) == "ready"
    tested = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v2}").json()
    test_rows = tested["report"]["split"]["test"]
    assert 0 < test_rows < 20
    body = {"dataset_id": dataset_id, "dataset_version_id": v2, "prompts": ["hi"]}
    queued = team.editor.post(evaluate_url(final), json=body)
    assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    assert done["metrics"]["eval_rows"] == test_rows  # not the upload's 20 rows


def test_a_prompt_longer_than_the_context_is_refused_at_submission_naming_the_limit(
    team: Team, installation: Path, trained: Path
) -> None:
    _, final = run_with_trained_model(team, installation, trained)  # block size 64
    dataset_id = team.editor.upload("heldout.jsonl", chat_jsonl(6)).json()["id"]
    long_prompt = " ".join(f"w{i}" for i in range(120))  # under 1000 characters
    body = {"dataset_id": dataset_id, "prompts": ["short", long_prompt], "max_new_tokens": 12}
    answer = team.editor.post(evaluate_url(final), json=body)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert answer.json()["param"] == "prompts"
    assert "prompt 2" in detail and "context of 64 tokens" in detail
    too_many = {"dataset_id": dataset_id, "prompts": ["hi"], "max_new_tokens": 64}
    answer = team.editor.post(evaluate_url(final), json=too_many)
    assert answer.status_code == 400 and answer.json()["param"] == "max_new_tokens"
    fits = {"dataset_id": dataset_id, "prompts": ["what is 7 plus one?"], "max_new_tokens": 12}
    assert team.editor.post(evaluate_url(final), json=fits).status_code == 202
