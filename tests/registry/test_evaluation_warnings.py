"""An evaluation on the data a version was trained on says so next to its scores."""

from __future__ import annotations

from tests.conftest import Team, chat_jsonl
from tests.inference.test_inference_server import build_tiny_model
from tests.openai.conftest import create_job, finish_like_the_worker, run_id_of, upload_file
from tests.signed_in import HTML, sign_in


def test_an_evaluation_on_the_training_data_is_flagged_and_one_on_other_data_is_not(
    team: Team,
) -> None:
    from app.services import artifacts

    job = create_job(team.owner, upload_file(team.owner, chat_jsonl(12)))
    run_id = run_id_of(job["id"])
    finish_like_the_worker(run_id)
    build_tiny_model(artifacts.resolve(f"runs/{run_id}/final"))
    [version] = [
        v for m in team.owner.get("/api/v1/models").json() for v in m["versions"]
        if v.get("run_id") == run_id
    ]  # fmt: skip
    trained_on = team.owner.get(f"/api/v1/runs/{run_id}").json()["dataset_id"]
    other = team.owner.upload("heldout.jsonl", chat_jsonl(6)).json()["id"]
    url = f"/api/v1/model-versions/{version['id']}/evaluations"
    for dataset_id in (trained_on, other):
        queued = team.owner.post(url, json={"dataset_id": dataset_id, "max_new_tokens": 8})
        assert queued.status_code == 202, queued.text

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/models/versions/{version['id']}", headers=HTML).text
    table = page[page.index('data-testid="evaluations"') :]
    rows = table[table.index("<tbody>") :].split("<tr>")[1:]
    flagged = ['data-testid="training-data-warning"' in row for row in rows]
    # Newest first: the held-out evaluation, then the one on the training data.
    assert flagged == [False, True]
