"""Sign-in, tokens, CSRF and request-origin rules."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Team


def test_first_admin_can_be_created_once_and_there_is_no_default_login(client: TestClient) -> None:
    assert (
        client.post(
            "/api/v1/session", json={"email": "admin@example.com", "password": "admin"}
        ).status_code
        == 401
    )
    first = client.post("/api/v1/setup", json={"email": "root@example.com", "password": PASSWORD})
    assert first.status_code == 201 and first.json()["user"]["is_admin"] is True
    second = client.post("/api/v1/setup", json={"email": "evil@example.com", "password": PASSWORD})
    assert second.status_code == 409 and "already been created" in second.json()["detail"]


def test_setup_refuses_a_weak_password(client: TestClient) -> None:
    response = client.post("/api/v1/setup", json={"email": "a@example.com", "password": "short"})
    assert response.status_code == 400 and "at least 10 characters" in response.json()["detail"]
    response = client.post(
        "/api/v1/setup", json={"email": "a@example.com", "password": "onlyletterslong"}
    )
    assert response.status_code == 400 and "mix letters" in response.json()["detail"]


def test_common_passwords_are_refused_everywhere_a_password_is_set_saying_why(
    client: TestClient,
) -> None:
    common = client.post("/api/v1/setup", json={"email": "a@example.com", "password": "password12"})
    assert common.status_code == 400, common.text
    detail = common.json()["detail"]
    assert "too easy to guess" in detail and "very common password" in detail, detail
    admin = client.post("/api/v1/setup", json={"email": "a@example.com", "password": PASSWORD})
    assert admin.status_code == 201  # correct-horse-42 scores 4 of 4
    csrf = {"X-CSRF-Token": admin.json()["csrf_token"]}
    for weak in ("Password123!", "qwertyuiop1", "letmein2024"):
        made = client.post(
            "/api/v1/users", json={"email": "b@example.com", "password": weak}, headers=csrf
        )
        assert made.status_code == 400 and "too easy to guess" in made.json()["detail"], made.text
    made = client.post(
        "/api/v1/users", json={"email": "b@example.com", "password": PASSWORD}, headers=csrf
    )
    assert made.status_code == 201, made.text


def test_unauthenticated_requests_get_401_with_a_clear_message(client: TestClient) -> None:
    for path in (
        "/api/v1/me",
        "/api/v1/datasets",
        "/api/v1/runs",
        "/openapi.json",
        "/docs",
        "/metrics",
    ):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "authentication required" in response.json()["detail"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_wrong_or_revoked_token_is_refused_at_once(team: Team) -> None:
    bad = team.editor.client.get("/api/v1/me", headers={"Authorization": "Bearer llmide_nope"})
    assert bad.status_code == 401 and "invalid or revoked" in bad.json()["detail"]
    created = team.editor.post("/api/v1/tokens", json={"name": "short-lived"}).json()
    new = {"Authorization": f"Bearer {created['token']}"}
    assert team.editor.client.get("/api/v1/me", headers=new).status_code == 200
    listed = team.editor.get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed) and created["prefix"] in [
        t["prefix"] for t in listed
    ]
    assert team.editor.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    assert team.editor.client.get("/api/v1/me", headers=new).status_code == 401


def test_a_user_cannot_revoke_someone_elses_token(team: Team) -> None:
    other = team.viewer.post("/api/v1/tokens", json={"name": "mine"}).json()
    assert team.editor.delete(f"/api/v1/tokens/{other['id']}").status_code == 404


def test_cookie_session_writes_need_the_csrf_token(team: Team) -> None:
    client = team.editor.client
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": team.editor.email, "password": PASSWORD})
    csrf = login.json()["csrf_token"]
    assert client.get("/api/v1/me").status_code == 200
    refused = client.post("/api/v1/tokens", json={"name": "x"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    accepted = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 201
    assert client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/v1/me").status_code == 401


def test_state_changing_requests_from_another_origin_are_refused(team: Team) -> None:
    response = team.editor.post(
        "/api/v1/tokens", json={"name": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403 and "cross-origin" in response.json()["detail"]
    same = team.editor.post(
        "/api/v1/tokens", json={"name": "x"}, headers={"Origin": "http://127.0.0.1"}
    )
    assert same.status_code == 201


def test_requests_for_an_unknown_host_name_are_refused(team: Team) -> None:
    # A DNS-rebinding page reaches us under its own host name.
    response = team.editor.get("/api/v1/me", headers={"Host": "rebind.evil.example"})
    assert response.status_code == 400


def test_login_is_rate_limited_after_repeated_failures(client: TestClient, team: Team) -> None:
    for _ in range(5):
        wrong = client.post(
            "/api/v1/session", json={"email": team.viewer.email, "password": "wrong-password-1"}
        )
        assert wrong.status_code == 401
    blocked = client.post(
        "/api/v1/session", json={"email": team.viewer.email, "password": PASSWORD}
    )
    assert blocked.status_code == 429 and "try again in" in blocked.json()["detail"]


def test_login_error_does_not_reveal_whether_the_account_exists(
    client: TestClient, team: Team
) -> None:
    unknown = client.post("/api/v1/session", json={"email": "nobody@example.com", "password": "x"})
    wrong = client.post("/api/v1/session", json={"email": team.viewer.email, "password": "x"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json()["detail"] == wrong.json()["detail"]


def test_only_admins_create_users_and_only_owners_add_members(team: Team) -> None:
    body = {"email": "new@example.com", "password": PASSWORD}
    assert team.owner.post("/api/v1/users", json=body).status_code == 403
    assert team.admin.post("/api/v1/users", json=body).status_code == 201
    add = {"email": "new@example.com", "role": "viewer"}
    assert team.editor.post("/api/v1/members", json=add).status_code == 403
    assert team.owner.post("/api/v1/members", json=add).status_code == 201
    again = team.owner.post("/api/v1/members", json=add)
    assert again.status_code == 409 and "already a member" in again.json()["detail"]


def test_signed_in_users_get_the_openapi_schema_and_docs(team: Team) -> None:
    schema = team.viewer.get("/openapi.json")
    assert schema.status_code == 200 and "/api/v1/runs" in schema.json()["paths"]
    docs = team.viewer.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui" in docs.text
    assert "cdn" not in docs.text.lower()


def test_workspace_header_for_a_workspace_the_user_is_not_in_is_not_found(team: Team) -> None:
    response = team.outsider.get(
        "/api/v1/runs", headers={"X-LLMIDE-Workspace": str(team.owner.workspace_id)}
    )
    assert response.status_code == 404
