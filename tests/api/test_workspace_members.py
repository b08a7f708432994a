"""Changing a member's role and removing a member: owners only, never the last owner, logged,
and a removed member's tokens and browser sessions lose the workspace on their next request."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import PASSWORD, Persona, Team, text_jsonl

CSRF_HEADER = "X-CSRF-Token"


def member_ids(team: Team) -> dict[str, int]:
    listed = team.owner.get("/api/v1/members")
    assert listed.status_code == 200, listed.text
    return {m["email"]: m["user_id"] for m in listed.json()}


def roles(team: Team) -> dict[str, str]:
    return {m["email"]: m["role"] for m in team.owner.get("/api/v1/members").json()}


def member_events(team: Team) -> list[dict[str, Any]]:
    log = team.owner.get("/api/v1/audit", params={"action": "member."})
    assert log.status_code == 200, log.text
    return [e for e in log.json()["items"] if e["action"] != "member.invite"]


def sign_in_browser(client: TestClient, persona: Persona, workspace_id: int) -> str:
    """Sign in with a cookie and pick `workspace_id`, as the dashboard does: the CSRF token."""
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": persona.email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    csrf = str(login.json()["csrf_token"])
    switched = client.post(
        "/workspace",
        data={"workspace_id": str(workspace_id)},
        headers={CSRF_HEADER: csrf},
        follow_redirects=False,
    )
    assert switched.status_code == 303, switched.text
    return csrf


def test_an_owner_changes_a_members_role_and_the_log_names_the_old_and_new_role(
    backend: str, team: Team
) -> None:
    viewer_id = member_ids(team)[team.viewer.email]
    changed = team.owner.patch(f"/api/v1/members/{viewer_id}", json={"role": "editor"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"user_id": viewer_id, "email": team.viewer.email, "role": "editor"}
    assert roles(team)[team.viewer.email] == "editor"
    # the new role holds at once: the former viewer may now upload
    uploaded = team.viewer.upload("corpus.jsonl", '{"text": "now an editor"}\n')
    assert uploaded.status_code == 201, uploaded.text

    # the same role again changes nothing and logs nothing
    assert (
        team.owner.patch(f"/api/v1/members/{viewer_id}", json={"role": "editor"}).status_code == 200
    )
    events = member_events(team)
    assert [(e["action"], e["target_id"], e["detail"]) for e in events] == [
        (
            "member.role_change",
            str(viewer_id),
            {"email": team.viewer.email, "from": "viewer", "to": "editor"},
        )
    ]


def test_a_removed_members_token_and_browser_session_lose_the_workspace_at_once(
    backend: str, team: Team, client: TestClient
) -> None:
    workspace = team.owner.workspace_id
    csrf = sign_in_browser(client, team.editor, workspace)
    assert client.get("/api/v1/members", headers={CSRF_HEADER: csrf}).status_code == 200
    assert team.editor.get("/api/v1/datasets").status_code == 200
    session_cookie = dict(client.cookies)

    editor_id = member_ids(team)[team.editor.email]
    removed = team.owner.delete(f"/api/v1/members/{editor_id}")
    assert removed.status_code == 204, removed.text

    # the same token, the very next request: the workspace is as unknown as anyone else's
    refused = team.editor.get("/api/v1/datasets")
    assert refused.status_code == 404, refused.text
    assert f"workspace '{workspace}' not found" in refused.json()["detail"]
    upload = team.editor.upload("corpus.jsonl", '{"text": "too late"}\n')
    assert upload.status_code == 404
    # the token itself still works for what is the editor's own
    assert team.editor.get("/api/v1/me", headers={"X-LLMIDE-Workspace": ""}).status_code == 200
    # the signed-in browser: the JSON API refuses, the pages fall back to the editor's own
    client.cookies.update(session_cookie)
    assert client.get("/api/v1/members", headers={CSRF_HEADER: csrf}).status_code == 404
    page = client.get("/settings/members")
    assert page.status_code == 200
    assert team.owner.email not in page.text
    assert team.editor.email not in roles(team)
    assert [(e["action"], e["detail"]) for e in member_events(team)] == [
        ("member.remove", {"email": team.editor.email, "role": "editor"})
    ]


def test_the_last_owner_can_be_neither_demoted_nor_removed(team: Team) -> None:
    ids = member_ids(team)
    owner_id = ids[team.owner.email]
    demoted = team.owner.patch(f"/api/v1/members/{owner_id}", json={"role": "editor"})
    assert demoted.status_code == 409, demoted.text
    assert "last owner" in demoted.json()["detail"]
    removed = team.owner.delete(f"/api/v1/members/{owner_id}")
    assert removed.status_code == 409 and "last owner" in removed.json()["detail"]
    assert roles(team)[team.owner.email] == "owner" and member_events(team) == []

    # with a second owner, the first may step down and then leave
    promoted = team.owner.patch(f"/api/v1/members/{ids[team.editor.email]}", json={"role": "owner"})
    assert promoted.status_code == 200
    assert (
        team.owner.patch(f"/api/v1/members/{owner_id}", json={"role": "viewer"}).status_code == 200
    )
    team.editor.workspace_id = team.owner.workspace_id
    assert team.editor.delete(f"/api/v1/members/{owner_id}").status_code == 204
    # ...and the remaining owner is now the last one
    last = team.editor.delete(f"/api/v1/members/{ids[team.editor.email]}")
    assert last.status_code == 409 and "last owner" in last.json()["detail"]


def test_another_workspaces_member_or_an_unknown_user_id_is_not_found(team: Team) -> None:
    outsider_id = team.outsider.get("/api/v1/me").json()["user"]["id"]
    for user_id in (outsider_id, 999_999, 2**40):
        for answer in (
            team.owner.patch(f"/api/v1/members/{user_id}", json={"role": "viewer"}),
            team.owner.delete(f"/api/v1/members/{user_id}"),
        ):
            assert answer.status_code == 404, answer.text
            assert f"user {user_id} is not a member of this workspace" in answer.json()["detail"]
    # the outsider, owner of their own workspace, cannot reach the owner's members either
    viewer_id = member_ids(team)[team.viewer.email]
    assert team.outsider.delete(f"/api/v1/members/{viewer_id}").status_code == 404
    assert (
        team.outsider.patch(
            f"/api/v1/members/{viewer_id}",
            json={"role": "owner"},
            headers={"X-LLMIDE-Workspace": str(team.owner.workspace_id)},
        ).status_code
        == 404
    )
    assert roles(team)[team.viewer.email] == "viewer"


def test_viewers_and_editors_may_neither_change_roles_nor_remove_members(team: Team) -> None:
    ids = member_ids(team)
    for member in (team.viewer, team.editor):
        for target in ids.values():
            for answer in (
                member.patch(f"/api/v1/members/{target}", json={"role": "owner"}),
                member.delete(f"/api/v1/members/{target}"),
            ):
                assert answer.status_code == 403, answer.text
                assert "this needs owner" in answer.json()["detail"]
    assert roles(team) == {
        team.owner.email: "owner",
        team.editor.email: "editor",
        team.viewer.email: "viewer",
    }
    assert member_events(team) == []


def test_an_unknown_role_is_refused_with_a_message_naming_the_roles(team: Team) -> None:
    viewer_id = member_ids(team)[team.viewer.email]
    for body in ({"role": "admin"}, {"role": ""}, {}, {"role": "owner", "extra": 1}):
        answer = team.owner.patch(f"/api/v1/members/{viewer_id}", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["param"] in ("role", "extra")
    bad = team.owner.patch(f"/api/v1/members/{viewer_id}", json={"role": "admin"}).json()
    assert "'owner', 'editor' or 'viewer'" in bad["detail"]
    assert roles(team)[team.viewer.email] == "viewer"


def test_the_members_page_refuses_demoting_the_last_owner_in_the_form_and_logs_changes(
    team: Team, client: TestClient
) -> None:
    ids = member_ids(team)
    csrf = sign_in_browser(client, team.owner, team.owner.workspace_id)
    form = {"csrf_token": csrf}
    refused = client.post(
        f"/settings/members/{ids[team.owner.email]}/role", data={**form, "role": "viewer"}
    )
    assert refused.status_code == 409
    assert "last owner" in refused.text and "<html" in refused.text
    bad = client.post(
        f"/settings/members/{ids[team.viewer.email]}/role", data={**form, "role": "x"}
    )
    assert bad.status_code == 400 and "unknown role" in bad.text
    changed = client.post(
        f"/settings/members/{ids[team.viewer.email]}/role",
        data={**form, "role": "editor"},
        follow_redirects=False,
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/settings/members"
    removed = client.post(
        f"/settings/members/{ids[team.editor.email]}/remove", data=form, follow_redirects=False
    )
    assert removed.status_code == 303
    assert roles(team) == {team.owner.email: "owner", team.viewer.email: "editor"}
    audit_page = client.get("/settings/audit", params={"action": "member."})
    assert audit_page.status_code == 200
    assert "member.role_change" in audit_page.text and "member.remove" in audit_page.text
    assert "from: viewer; to: editor" in audit_page.text


def test_a_removed_members_open_run_chart_is_closed_before_it_shows_anything_new(
    team: Team, client: TestClient
) -> None:
    dataset = team.owner.upload("corpus.jsonl", text_jsonl(8)).json()
    run = team.owner.post(
        "/api/v1/runs", json={"dataset_id": dataset["id"], "config": {"max_steps": 2}}
    ).json()
    url = f"ws://127.0.0.1/ws/runs/{run['id']}"
    with client.websocket_connect(url, headers=team.editor.headers) as ws:
        first = ws.receive_json()
        while first["type"] != "status":  # the first batch ends with the run's status
            first = ws.receive_json()
        assert first["status"] == "queued"
        editor_id = member_ids(team)[team.editor.email]
        assert team.owner.delete(f"/api/v1/members/{editor_id}").status_code == 204
        # news the editor may no longer see: the chart closes instead of showing it
        assert team.owner.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                message = ws.receive_json()
                assert message.get("status") != "cancelled", "a removed member saw the cancel"
    assert closed.value.code == 4404


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_owners_demoting_each_other_at_once_leave_one_owner(backend: str, team: Team) -> None:
    """The second change waits for the first (a lock on the workspace row), then counts the
    owners the first one left: without the lock both would see two owners and leave none."""
    import threading

    from sqlalchemy import text

    from app.core.errors import Conflict
    from app.db.models import Role, User
    from app.db.session import get_sessionmaker, session_scope
    from app.services.workspaces import access as workspace_access
    from app.services.workspaces import members as workspace_members

    ids = member_ids(team)
    owner_id, editor_id = ids[team.owner.email], ids[team.editor.email]
    promoted = team.owner.patch(f"/api/v1/members/{editor_id}", json={"role": "owner"})
    assert promoted.status_code == 200, promoted.text
    workspace = team.owner.workspace_id

    def demote(session: Any, actor_id: int, target_id: int) -> None:
        actor = session.get(User, actor_id)
        ctx = workspace_access.context_for(session=session, user=actor, workspace_ref=workspace)
        workspace_members.change_member_role(
            session=session, ctx=ctx, user_id=target_id, role=Role.viewer
        )

    outcome: list[BaseException | None] = []

    def second_owner() -> None:
        try:
            with session_scope() as session:
                demote(session, editor_id, owner_id)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    first = get_sessionmaker()()
    try:
        demote(first, owner_id, editor_id)  # not committed yet: it holds the lock
        thread = threading.Thread(target=second_owner)
        thread.start()
        with session_scope() as probe:  # wait until the second change waits on the lock
            while not outcome and not probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ):
                probe.rollback()
                thread.join(0.05)
        assert not outcome, "the second demotion did not wait for the first"
        first.commit()
    finally:
        first.close()
    thread.join()
    assert isinstance(outcome[0], Conflict) and "last owner" in outcome[0].message
    assert roles(team)[team.owner.email] == "owner"
    assert roles(team)[team.editor.email] == "viewer"
