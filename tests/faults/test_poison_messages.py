"""The poison-message limit: a task message whose worker died on every delivery is given up
after `task_max_deliveries` (its dataset version, run or job fails with the reason) instead of
being redelivered for ever; a task that ends in its own process leaves no count behind."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from app.core.celery_config import PREPARE_TASK
from app.db.models import TaskDelivery
from app.db.session import session_scope
from app.services import task_deliveries
from tests.api.test_dataset_prep_api import RECIPE, prepare_via_api, upload, version_ids
from tests.conftest import Team
from workers.prep_tasks import prepare_dataset

ROWS = [{"text": t} for t in ["the cat sat", "a dog ran", "the sun rose"] * 5]


def counted() -> list[tuple[str, int]]:
    with session_scope() as session:
        return [(row.task_id, row.deliveries) for row in session.scalars(select(TaskDelivery))]


def test_a_task_whose_worker_died_on_every_delivery_is_given_up_and_says_why(
    team: Team, installation: Path, backend: str
) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    v2 = prepare_via_api(team, dataset_id, v1, RECIPE)
    task_id = "lost-three-times"
    for _ in range(3):  # what three deliveries whose worker was killed leave behind
        with session_scope() as session:
            task_deliveries.count(session=session, task_id=task_id, task_name=PREPARE_TASK)
    assert counted() == [(task_id, 3)]

    assert prepare_dataset.apply(args=[v2], task_id=task_id).result == "poisoned"
    version = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v2}").json()
    assert version["status"] == "failed", version
    assert "its worker died each time" in version["error"], version
    assert counted() == []


def test_a_task_that_ends_in_its_process_leaves_no_delivery_count(
    team: Team, installation: Path
) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    v2 = prepare_via_api(team, dataset_id, v1, RECIPE)
    with session_scope() as session:  # one earlier delivery was lost: still under the limit
        task_deliveries.count(session=session, task_id="lost-once", task_name=PREPARE_TASK)
    assert prepare_dataset.apply(args=[v2], task_id="lost-once").result == "ready"
    assert counted() == []
