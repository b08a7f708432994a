"""No page of ours can be framed by another site (clickjacking): every answer forbids it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import PASSWORD

HTML = {"Accept": "text/html"}


def _assert_unframeable(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert headers.get("x-frame-options") == "DENY", (response, dict(headers))
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), dict(headers)


def test_every_kind_of_answer_forbids_framing(client: TestClient) -> None:
    setup = client.post("/api/v1/setup", json={"email": "admin@example.com", "password": PASSWORD})
    assert setup.status_code == 201
    answers = [
        client.get("/runs", headers=HTML),  # a signed-in page
        client.get("/api/v1/me"),  # JSON
        client.get("/static/css/app.css"),  # a static file
        client.get("/healthz"),
        client.get("/api/v1/runs/999999"),  # an error
        client.get("/runs", headers={**HTML, "Host": "evil.example"}),  # a refused host
    ]
    client.cookies.clear()
    answers.append(client.get("/login", headers=HTML))  # signed out
    for response in answers:
        _assert_unframeable(response)
    assert answers[0].status_code == 200 and answers[-2].status_code == 400
