"""The audit log: every launch, cancel, upload, delete, deploy, registration, invitation and token
change leaves exactly one row, written with the change (a refused change leaves none); owners
read their workspace's log, nobody else does."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import PASSWORD, Team, text_jsonl


def audit_rows(**where: Any) -> list[Any]:
    from app.db.models import AuditEvent
    from app.db.session import session_scope

    with session_scope() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        for column, value in where.items():
            query = query.where(getattr(AuditEvent, column) == value)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def owner_log(team: Team, **params: Any) -> dict[str, Any]:
    answer = team.owner.get("/api/v1/audit", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_launch_cancel_upload_delete_and_invite_are_each_logged_with_actor_target_and_address(
    backend: str, team: Team
) -> None:
    dataset = team.editor.upload("corpus.jsonl", text_jsonl(8), name="audited").json()
    spare = team.editor.upload("spare.jsonl", text_jsonl(9), name="spare").json()
    run = team.editor.post(
        "/api/v1/runs", json={"dataset_id": dataset["id"], "config": {"max_steps": 2}}
    ).json()
    assert team.owner.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 200
    assert team.editor.delete(f"/api/v1/datasets/{spare['id']}").status_code == 204
    invited = team.owner.post(
        "/api/v1/members", json={"email": team.outsider.email, "role": "viewer"}
    )
    assert invited.status_code == 201

    events = owner_log(team)["items"]
    seen = [(e["action"], e["actor_email"], e["target_type"], e["target_id"]) for e in events]
    assert seen[:5] == [
        ("member.invite", "owner@example.com", "user", str(invited.json()["user_id"])),
        ("dataset.delete", "editor@example.com", "dataset", str(spare["id"])),
        ("run.cancel", "owner@example.com", "run", str(run["id"])),
        ("run.launch", "editor@example.com", "run", str(run["id"])),
        ("dataset.upload", "editor@example.com", "dataset", str(spare["id"])),
    ]
    launch = events[3]
    assert launch["detail"]["dataset_id"] == dataset["id"]
    assert launch["ip"] == "testclient"  # the request's client address
    assert events[0]["detail"] == {"email": team.outsider.email, "role": "viewer"}


def test_a_refused_or_failed_change_leaves_no_audit_row(backend: str, team: Team) -> None:
    dataset = team.owner.upload("corpus.jsonl", text_jsonl(8)).json()
    team.owner.post("/api/v1/runs", json={"dataset_id": dataset["id"], "config": {"max_steps": 2}})
    before = len(audit_rows())

    # a viewer may not launch; a dataset in use cannot be deleted; a second invitation conflicts
    assert team.viewer.post("/api/v1/runs", json={"dataset_id": dataset["id"]}).status_code == 403
    assert team.editor.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 409
    again = team.owner.post("/api/v1/members", json={"email": team.viewer.email, "role": "owner"})
    assert again.status_code == 409
    bad_upload = team.editor.upload("bad.jsonl", '{"text": "ok"}\n{oops\n')
    assert bad_upload.status_code == 400

    assert len(audit_rows()) == before


def test_a_launch_the_broker_refuses_leaves_neither_the_run_nor_its_audit_row(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core import task_queue

    def broker_down(run_id: int) -> str:
        raise ConnectionError("broker unreachable")

    dataset = team.owner.upload("corpus.jsonl", text_jsonl(8)).json()
    monkeypatch.setattr(task_queue, "enqueue_training", broker_down)
    with pytest.raises(ConnectionError):
        team.owner.post("/api/v1/runs", json={"dataset_id": dataset["id"]})
    assert audit_rows(action="run.launch") == []


def test_only_owners_read_the_log_and_only_their_own_workspace(team: Team) -> None:
    team.owner.upload("corpus.jsonl", text_jsonl(8), name="owners-secret-corpus")
    for member in (team.editor, team.viewer):
        refused = member.get("/api/v1/audit")
        assert refused.status_code == 403, refused.text
        assert "needs owner" in refused.text
    outsider_log = team.outsider.get("/api/v1/audit")
    assert outsider_log.status_code == 200
    assert "owners-secret-corpus" not in outsider_log.text
    elsewhere = team.outsider.get(
        "/api/v1/audit", headers={"X-LLMIDE-Workspace": str(team.owner.workspace_id)}
    )
    assert elsewhere.status_code == 404


def test_the_log_pages_backwards_and_filters_by_action_or_resource(team: Team) -> None:
    for i in range(3):
        team.owner.upload(f"c{i}.jsonl", text_jsonl(4 + i), name=f"c{i}")
    first = owner_log(team, limit=2, action="dataset.upload")
    assert [e["detail"]["name"] for e in first["items"]] == ["c2", "c1"]
    second = owner_log(team, limit=2, action="dataset.upload", before_id=first["next_before_id"])
    assert [e["detail"]["name"] for e in second["items"]] == ["c0"]
    assert second["next_before_id"] is None
    by_resource = owner_log(team, action="member.")["items"]
    assert {e["action"] for e in by_resource} == {"member.invite"}
    assert owner_log(team, action="no.such")["items"] == []


def test_registration_is_logged_as_done_by_whoever_launched_the_run(team: Team) -> None:
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset = team.owner.upload("corpus.jsonl", text_jsonl(8)).json()
    run = team.editor.post("/api/v1/runs", json={"dataset_id": dataset["id"]}).json()
    with session_scope() as session:
        run_execution.claim(session=session, run_id=run["id"], task_id="t")
        run_execution.finish(
            session=session,
            run_id=run["id"],
            status=RunStatus.succeeded,
            final_checkpoint_key=f"runs/{run['id']}/final",
            final_step=2,
            final_metrics={},
        )
    [event] = [e for e in owner_log(team)["items"] if e["action"] == "model.register"]
    assert event["actor_email"] == "editor@example.com"
    assert event["detail"]["run_id"] == run["id"]


def test_token_and_account_events_are_server_level_and_in_no_workspace_log(team: Team) -> None:
    created = team.owner.post("/api/v1/tokens", json={"name": "ci-key"}).json()
    assert team.owner.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    rows = audit_rows(target_type="token", target_id=str(created["id"]))
    assert [(r.action, r.workspace_id) for r in rows] == [
        ("token.create", None),
        ("token.revoke", None),
    ]
    accounts = audit_rows(action="user.create", target_type="user")
    assert {r.detail["email"] for r in accounts} >= {"owner@example.com", "viewer@example.com"}
    assert all(e["action"] != "token.create" for e in owner_log(team)["items"])


def browser_headers(team: Team, email: str, workspace_id: int) -> dict[str, str]:
    """A signed-in browser's cookie, in the owner's workspace (the pages take no API tokens)."""
    client = team.owner.client
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    csrf = login.json()["csrf_token"]
    switched = client.post(
        "/workspace",
        data={"workspace_id": str(workspace_id)},
        headers={"Accept": "text/html", "X-CSRF-Token": csrf},
        follow_redirects=False,
    )
    assert switched.status_code == 303, switched.text
    cookie = client.cookies.get("llmide_session")
    client.cookies.clear()
    return {"Cookie": f"llmide_session={cookie}", "Accept": "text/html"}


def test_the_audit_page_shows_owners_the_events_and_refuses_editors(team: Team) -> None:
    team.owner.upload("corpus.jsonl", text_jsonl(8), name="page-corpus")
    client = team.owner.client
    workspace = team.owner.workspace_id
    page = client.get("/settings/audit", headers=browser_headers(team, team.owner.email, workspace))
    assert page.status_code == 200
    assert "dataset.upload" in page.text and "page-corpus" in page.text
    assert 'href="/settings/audit"' in page.text  # owners get the menu entry
    editor = browser_headers(team, team.editor.email, workspace)
    refused = client.get("/settings/audit", headers=editor)
    assert refused.status_code == 403
    assert "page-corpus" not in refused.text
    members = client.get("/settings/members", headers=editor)
    assert 'href="/settings/audit"' not in members.text  # nor the menu entry


def test_sign_in_failures_are_logged_and_counted_and_a_success_starts_the_count_over(
    backend: str, team: Team
) -> None:
    client = team.owner.client
    client.cookies.clear()

    def sign_in(password: str) -> int:
        answer = client.post(
            "/api/v1/session", json={"email": " Viewer@Example.com", "password": password}
        )
        client.cookies.clear()
        return int(answer.status_code)

    assert [sign_in("wrong-password-1") for _ in range(4)] == [401] * 4
    assert sign_in(PASSWORD) == 200  # the fifth attempt is allowed, and resets the count
    assert [sign_in("wrong-password-1") for _ in range(5)] == [401] * 5
    assert sign_in(PASSWORD) == 429

    failed = audit_rows(action="auth.login_failed")
    assert len(failed) == 9
    assert {(r.target_id, r.ip, r.workspace_id, r.actor_id) for r in failed} == {
        ("viewer@example.com", "testclient", None, None)
    }
