"""Uniqueness that must hold under concurrency: one dataset per content, one live name.

A probe made 9 datasets from 10 identical concurrent uploads and 2 live deployments with one
name from 6 concurrent deploys (issue 18). Real threads against the real app and database.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from tests.conftest import Team, text_jsonl


def at_once(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run `call(i)` in `count` threads released together; their results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_ten_identical_concurrent_uploads_make_one_dataset(team: Team, backend: str) -> None:
    content = text_jsonl(400)
    answers = at_once(10, lambda i: team.editor.upload("same.jsonl", content, name=f"copy {i}"))
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 9
    listed = team.editor.get("/api/v1/datasets").json()
    items = listed["items"] if isinstance(listed, dict) else listed
    assert len(items) == 1


def fake_gguf_version(team: Team, name: str) -> int:
    """A registered model version without a run (an imported GGUF file; never loaded here)."""
    answer = team.editor.post(
        "/api/v1/models/import/upload",
        files={"file": ("m.gguf", io.BytesIO(b"GGUF" + bytes(64)))},
        data={"name": name},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_six_concurrent_deploys_under_one_name_leave_one_live_deployment(
    team: Team, backend: str
) -> None:
    versions = [fake_gguf_version(team, "first"), fake_gguf_version(team, "second")]
    answers = at_once(
        6,
        lambda i: team.editor.post(
            "/api/v1/deployments",
            json={"model_version_id": versions[i % 2], "name": "shared"},
        ),
    )
    # The winner is recorded, then fails to load (no inference server here): 503. A deploy of
    # the winner's own version reuses its deployment; the other version's get 409.
    codes = [a.status_code for a in answers]
    assert set(codes) <= {409, 503}, [a.text for a in answers]
    assert 409 in codes
    conflict = next(a for a in answers if a.status_code == 409).json()
    assert conflict["param"] == "name" and "already called 'shared'" in conflict["detail"]
    live = [
        d
        for d in team.editor.get("/api/v1/deployments").json()
        if d["name"] == "shared" and d["status"] != "stopped"
    ]
    assert len(live) == 1


def test_the_database_refuses_a_second_live_deployment_with_a_taken_name(
    team: Team, backend: str
) -> None:
    from app.db.models import Deployment, DeploymentStatus
    from app.db.session import session_scope

    versions = [fake_gguf_version(team, "one"), fake_gguf_version(team, "two")]

    def add(version_id: int, status: str) -> None:
        with session_scope() as session:
            session.add(
                Deployment(
                    workspace_id=team.editor.workspace_id,
                    model_version_id=version_id,
                    status=status,
                    name="taken",
                )
            )

    add(versions[0], DeploymentStatus.stopped)
    add(versions[1], DeploymentStatus.stopped)  # stopped ones may share a name
    add(versions[0], DeploymentStatus.ready)
    with pytest.raises(IntegrityError):
        add(versions[1], DeploymentStatus.failed)
