"""The page routes' guards, without a browser: sign-in redirects, CSRF, roles, error pages."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Persona, Team, text_jsonl

HTML = {"Accept": "text/html"}


def _csrf(client: TestClient, path: str = "/login") -> str:
    page = client.get(path, headers=HTML)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def _sign_in(client: TestClient, persona: Persona) -> str:
    """Sign in through the login form, act in the persona's workspace; returns the CSRF token."""
    client.cookies.clear()
    signed_in = client.post(
        "/login",
        headers=HTML,
        follow_redirects=False,
        data={"email": persona.email, "password": PASSWORD, "csrf_token": _csrf(client)},
    )
    assert signed_in.status_code == 303, signed_in.text
    token = _csrf(client, "/")
    switched = client.post(
        "/workspace",
        headers=HTML,
        follow_redirects=False,
        data={"workspace_id": str(persona.workspace_id), "csrf_token": token},
    )
    assert switched.status_code == 303, switched.text
    return token


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs/3", "/runs/3"),
        ("/runs?page=2", "/runs?page=2"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example", "/"),
        ("runs", "/"),
        ("/runs\r\nSet-Cookie: x=1", "/"),
        (None, "/"),
    ],
)
def test_next_only_follows_same_site_paths(target: str | None, expected: str) -> None:
    from app.web.pages import safe_next

    assert safe_next(target) == expected


def test_a_signed_in_login_never_redirects_off_site(client: TestClient, team: Team) -> None:
    _sign_in(client, team.owner)
    answer = client.get("/login?next=//evil.example", headers=HTML, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_it_sends_anonymous_visitors_to_login_with_the_page_to_return_to(
    client: TestClient, team: Team
) -> None:
    client.cookies.clear()
    answer = client.get("/runs?page=2", headers=HTML, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/runs%3Fpage%3D2"
    htmx = client.get("/runs", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.headers["HX-Redirect"] == "/login?next=/runs"


def test_page_writes_need_the_csrf_token(client: TestClient, team: Team) -> None:
    _sign_in(client, team.owner)
    refused = client.post("/settings/tokens", data={"name": "x"}, headers=HTML)
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert "<html" in refused.text  # a page, not JSON


def test_a_viewer_cannot_launch_or_upload_through_the_pages(client: TestClient, team: Team) -> None:
    uploaded = team.editor.upload("corpus.jsonl", text_jsonl(20))
    assert uploaded.status_code == 201, uploaded.text
    token = _sign_in(client, team.viewer)
    assert client.get("/runs/new", headers=HTML).status_code == 403
    launched = client.post(
        "/runs",
        headers=HTML,
        data={"dataset_id": str(uploaded.json()["id"]), "csrf_token": token},
    )
    assert launched.status_code == 403 and "needs editor" in launched.text
    upload = client.post(
        "/datasets",
        headers={**HTML, "X-CSRF-Token": token},
        files={"file": ("c.jsonl", io.BytesIO(text_jsonl(5).encode()))},
    )
    assert upload.status_code == 403 and "needs editor" in upload.text
    runs_page = client.get("/runs", headers=HTML)
    assert "New run" not in runs_page.text


def test_an_outsider_gets_a_404_page_for_another_teams_run(client: TestClient, team: Team) -> None:
    uploaded = team.editor.upload("corpus.jsonl", text_jsonl(20))
    run = team.editor.post(
        "/api/v1/runs", json={"dataset_id": uploaded.json()["id"], "config": {"max_steps": 2}}
    )
    assert run.status_code == 201, run.text
    _sign_in(client, team.outsider)
    answer = client.get(f"/runs/{run.json()['id']}", headers=HTML)
    assert answer.status_code == 404 and "not found" in answer.text
    assert "<html" in answer.text
