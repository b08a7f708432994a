"""Server administration through the API and the pages: accounts (create, list, disable,
enable, reset a password) and workspaces (list, create for an owner). Three personas: an
administrator, a signed-in non-administrator (a workspace owner) and someone signed out."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Team
from tests.signed_in import HTML, sign_in

NEW_PASSWORD = "violet-harbour-lamp-93"


def bearer(client: TestClient, token: str) -> int:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code


def can_sign_in(client: TestClient, email: str, password: str) -> bool:
    client.cookies.clear()
    answer = client.post("/api/v1/session", json={"email": email, "password": password})
    client.cookies.clear()
    return answer.status_code == 200


def user_id(team: Team, email: str) -> int:
    listed = team.admin.get("/api/v1/users").json()
    return next(int(u["id"]) for u in listed if u["email"] == email)


# --- API --------------------------------------------------------------------------------------
def test_an_administrator_lists_every_account_with_its_status(team: Team) -> None:
    listed = team.admin.get("/api/v1/users")
    assert listed.status_code == 200
    by_email = {u["email"]: u for u in listed.json()}
    assert set(by_email) >= {"admin@example.com", "owner@example.com", "viewer@example.com"}
    assert by_email["admin@example.com"]["is_admin"] is True
    assert all(u["is_active"] for u in by_email.values())
    assert "password_hash" not in by_email["owner@example.com"]


def test_a_disabled_user_cannot_sign_in_and_their_token_stops_working_until_enabled(
    team: Team,
) -> None:
    client, viewer = team.admin.client, team.viewer
    assert bearer(client, viewer.token) == 200
    target = user_id(team, viewer.email)

    disabled = team.admin.patch(f"/api/v1/users/{target}", json={"is_active": False})
    assert disabled.status_code == 200 and disabled.json()["is_active"] is False
    assert bearer(client, viewer.token) == 401
    assert not can_sign_in(client, viewer.email, PASSWORD)

    enabled = team.admin.patch(f"/api/v1/users/{target}", json={"is_active": True})
    assert enabled.json()["is_active"] is True
    assert bearer(client, viewer.token) == 200
    assert can_sign_in(client, viewer.email, PASSWORD)


def test_a_disabled_users_browser_session_ends_at_once(team: Team) -> None:
    sign_in(team.viewer)
    assert team.viewer.client.get("/runs", headers=HTML, follow_redirects=False).status_code == 200
    cookies = dict(team.viewer.client.cookies)
    team.admin.patch(f"/api/v1/users/{user_id(team, team.viewer.email)}", json={"is_active": False})
    team.viewer.client.cookies.update(cookies)
    page = team.viewer.client.get("/runs", headers=HTML, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    team.viewer.client.cookies.clear()


def test_an_administrator_cannot_disable_their_own_account(team: Team) -> None:
    own = team.admin.patch(
        f"/api/v1/users/{user_id(team, team.admin.email)}", json={"is_active": False}
    )
    assert own.status_code == 409
    assert "your own account" in own.json()["detail"]
    assert bearer(team.admin.client, team.admin.token) == 200


def test_a_reset_password_replaces_the_old_one_and_weak_ones_are_refused(team: Team) -> None:
    client, owner = team.admin.client, team.owner
    target = user_id(team, owner.email)
    weak = team.admin.post(f"/api/v1/users/{target}/password", json={"password": "password12"})
    assert weak.status_code == 400 and "password" in weak.json()["detail"]
    assert can_sign_in(client, owner.email, PASSWORD)

    reset = team.admin.post(f"/api/v1/users/{target}/password", json={"password": NEW_PASSWORD})
    assert reset.status_code == 204
    assert not can_sign_in(client, owner.email, PASSWORD)
    assert can_sign_in(client, owner.email, NEW_PASSWORD)


def test_an_unknown_user_id_is_a_404(team: Team) -> None:
    assert team.admin.patch("/api/v1/users/99999", json={"is_active": False}).status_code == 404
    too_big = team.admin.post("/api/v1/users/99999999999/password", json={"password": "x"})
    assert too_big.status_code in (404, 422)


def test_an_administrator_lists_every_workspace_and_creates_one_for_an_owner(team: Team) -> None:
    created = team.admin.post(
        "/api/v1/admin/workspaces", json={"name": "Research", "owner_email": team.editor.email}
    )
    assert created.status_code == 201, created.text
    assert created.json()["owners"] == [team.editor.email]
    listed = {w["name"]: w for w in team.admin.get("/api/v1/admin/workspaces").json()}
    assert listed["Research"]["owners"] == [team.editor.email]
    assert listed["Research"]["members"] == 1
    owners_workspace = next(w for w in listed.values() if team.owner.email in w["owners"])
    assert owners_workspace["members"] == 3  # the owner, the editor and the viewer
    # The new owner sees it among their workspaces; the administrator is not a member.
    mine = [w["name"] for w in team.editor.get("/api/v1/workspaces").json()]
    assert "Research" in mine
    assert "Research" not in [w["name"] for w in team.admin.get("/api/v1/workspaces").json()]

    unknown = team.admin.post(
        "/api/v1/admin/workspaces", json={"name": "X", "owner_email": "nobody@example.com"}
    )
    assert unknown.status_code == 400 and "create the account first" in unknown.json()["detail"]


ADMIN_CALLS = [
    ("GET", "/api/v1/users", None),
    ("PATCH", "/api/v1/users/1", {"is_active": False}),
    ("POST", "/api/v1/users/1/password", {"password": NEW_PASSWORD}),
    ("GET", "/api/v1/admin/workspaces", None),
    ("POST", "/api/v1/admin/workspaces", {"name": "Mine", "owner_email": "owner@example.com"}),
]


@pytest.mark.parametrize(("method", "url", "body"), ADMIN_CALLS)
def test_a_non_administrator_is_refused_and_a_signed_out_caller_must_sign_in(
    team: Team, method: str, url: str, body: dict | None
) -> None:
    refused = team.owner.client.request(method, url, json=body, headers=team.owner.headers)
    assert refused.status_code == 403
    team.owner.client.cookies.clear()
    anonymous = team.owner.client.request(method, url, json=body)
    assert anonymous.status_code == 401
    assert can_sign_in(team.admin.client, team.admin.email, PASSWORD)  # nothing was changed


# --- pages ------------------------------------------------------------------------------------
def test_an_administrator_creates_disables_and_resets_accounts_from_the_users_page(
    team: Team,
) -> None:
    csrf = sign_in(team.admin)
    client = team.admin.client
    page = client.get("/admin/users", headers=HTML)
    assert page.status_code == 200 and "owner@example.com" in page.text

    created = client.post(
        "/admin/users",
        data={"email": "ada@example.com", "password": NEW_PASSWORD, "csrf_token": csrf},
        headers=HTML,
    )
    assert created.status_code == 200
    assert "ada@example.com can now sign in" in created.text
    weak = client.post(
        "/admin/users",
        data={"email": "bob@example.com", "password": "password12", "csrf_token": csrf},
        headers=HTML,
    )
    assert weak.status_code == 400 and "too easy to guess" in weak.text
    assert 'value="bob@example.com"' in weak.text  # the form keeps what was typed

    ada = user_id(team, "ada@example.com")
    disabled = client.post(
        f"/admin/users/{ada}/active", data={"active": "false", "csrf_token": csrf}, headers=HTML
    )
    assert disabled.status_code == 200 and "ada@example.com is disabled" in disabled.text
    assert not can_sign_in(client, "ada@example.com", NEW_PASSWORD)

    csrf = sign_in(team.admin)  # can_sign_in signed the client out
    client.post(
        f"/admin/users/{ada}/active", data={"active": "true", "csrf_token": csrf}, headers=HTML
    )
    reset = client.post(
        f"/admin/users/{ada}/password",
        data={"password": "amber-tunnel-kite-58", "csrf_token": csrf},
        headers=HTML,
    )
    assert reset.status_code == 200 and "password is changed" in reset.text
    assert can_sign_in(client, "ada@example.com", "amber-tunnel-kite-58")


def test_an_administrator_creates_a_workspace_from_the_workspaces_page(team: Team) -> None:
    csrf = sign_in(team.admin)
    client = team.admin.client
    created = client.post(
        "/admin/workspaces",
        data={"name": "Translation team", "owner_email": team.owner.email, "csrf_token": csrf},
        headers=HTML,
    )
    assert created.status_code == 200, created.text[:300]
    assert "Workspace Translation team is created" in created.text
    table = re.search(r'<table data-testid="workspaces">(.*?)</table>', created.text, re.S)
    assert table and "Translation team" in table.group(1)


@pytest.mark.parametrize("path", ["/admin/users", "/admin/workspaces"])
def test_administration_pages_refuse_non_administrators_and_send_signed_out_people_to_sign_in(
    team: Team, path: str
) -> None:
    sign_in(team.owner)
    refused = team.owner.client.get(path, headers=HTML)
    assert refused.status_code == 403 and "administrator" in refused.text
    assert 'href="/admin/users"' not in team.owner.client.get("/", headers=HTML).text
    team.owner.client.cookies.clear()
    anonymous = team.owner.client.get(path, headers=HTML, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_inviting_someone_without_an_account_links_an_administrator_to_creating_it(
    team: Team,
) -> None:
    csrf = sign_in(team.admin)
    answer = team.admin.client.post(
        "/settings/members",
        data={"email": "newcomer@example.com", "role": "viewer", "csrf_token": csrf},
        headers=HTML,
    )
    assert answer.status_code == 404
    assert 'href="/admin/users?email=newcomer%40example.com"' in answer.text
    form = team.admin.client.get("/admin/users?email=newcomer%40example.com", headers=HTML).text
    assert 'value="newcomer@example.com"' in form
    assert 'href="/admin/users"' in team.admin.client.get("/", headers=HTML).text

    # An owner who is not an administrator is told to ask one, with no link.
    csrf = sign_in(team.owner)
    answer = team.owner.client.post(
        "/settings/members",
        data={"email": "newcomer@example.com", "role": "viewer", "csrf_token": csrf},
        headers=HTML,
    )
    assert "an administrator must create the account first" in answer.text
    assert "/admin/users?email=" not in answer.text
