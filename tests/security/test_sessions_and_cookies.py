"""Browser sessions: cookie flags, sign-out that really ends a session, and a one-time setup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import PASSWORD

HTML = {"Accept": "text/html"}
COOKIE = "llmide_session"
ADMIN = "admin@example.com"


def _set_cookie(response: httpx.Response) -> str:
    headers = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers
    return headers[0]


def _flags(set_cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}


def _attributes(set_cookie: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in set_cookie.split(";")[1:])
    return {name.lower(): value.lower() for name, _, value in pairs}


def _page_csrf(client: TestClient, path: str = "/login") -> str:
    page = client.get(path, headers=HTML)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text[:300]
    return match.group(1)


def _sign_in(client: TestClient, email: str = ADMIN) -> tuple[str, str]:
    """Sign in through the JSON API; returns the session cookie and its CSRF token."""
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    cookie = client.cookies.get(COOKIE)
    assert cookie
    return cookie, login.json()["csrf_token"]


def _as(client: TestClient, cookie: str, method: str, url: str, **kw: object) -> httpx.Response:
    client.cookies.clear()
    headers = {"Cookie": f"{COOKIE}={cookie}", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return client.request(method, url, headers=headers, follow_redirects=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def admin_client(client: TestClient) -> TestClient:
    created = client.post("/api/v1/setup", json={"email": ADMIN, "password": PASSWORD})
    assert created.status_code == 201, created.text
    client.cookies.clear()
    return client


@pytest.fixture
def secure_client(installation: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app as deployed behind TLS: LLMIDE_COOKIE_SECURE=true."""
    from app.core.settings import get_settings
    from app.main import create_app

    monkeypatch.setenv("LLMIDE_COOKIE_SECURE", "true")
    get_settings.cache_clear()
    with TestClient(create_app(), base_url="https://127.0.0.1") as test_client:
        yield test_client
    get_settings.cache_clear()


def test_the_session_cookie_is_http_only_and_same_site_lax(client: TestClient) -> None:
    setup = client.post("/api/v1/setup", json={"email": ADMIN, "password": PASSWORD})
    client.cookies.clear()
    anonymous = client.get("/login", headers=HTML, follow_redirects=False)
    for response in (anonymous, setup):
        set_cookie = _set_cookie(response)
        flags = _flags(set_cookie)
        assert "httponly" in flags
        assert _attributes(set_cookie)["samesite"] == "lax"
        assert _attributes(set_cookie)["path"] == "/"
        assert "secure" not in flags  # plain http (the embedded default) could not send it back


def test_the_session_cookie_is_secure_when_configured(secure_client: TestClient) -> None:
    setup = secure_client.post("/api/v1/setup", json={"email": ADMIN, "password": PASSWORD})
    assert setup.status_code == 201
    secure_client.cookies.clear()
    login = secure_client.post("/api/v1/session", json={"email": ADMIN, "password": PASSWORD})
    csrf = _page_csrf(secure_client)
    form = secure_client.post(
        "/login",
        data={"email": ADMIN, "password": PASSWORD, "csrf_token": csrf},
        headers=HTML,
        follow_redirects=False,
    )
    assert form.status_code == 303
    for response in (setup, login, form):
        flags = _flags(_set_cookie(response))
        assert {"secure", "httponly"} <= flags
        assert _attributes(_set_cookie(response))["samesite"] == "lax"


def test_signing_out_ends_the_session_on_the_server_not_only_in_the_browser(
    admin_client: TestClient, backend: str
) -> None:
    """A copy of the cookie (a shared computer, a stolen backup) stops working at sign-out."""
    cookie, csrf = _sign_in(admin_client)
    assert _as(admin_client, cookie, "GET", "/api/v1/me").status_code == 200
    out = _as(admin_client, cookie, "DELETE", "/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    assert _as(admin_client, cookie, "GET", "/api/v1/me").status_code == 401
    page = _as(admin_client, cookie, "GET", "/runs", headers=HTML)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    token = _as(
        admin_client,
        cookie,
        "POST",
        "/api/v1/tokens",
        json={"name": "x"},
        headers={"X-CSRF-Token": csrf},
    )
    assert token.status_code == 401
    admin_client.cookies.clear()
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        admin_client.websocket_connect(
            "/ws/runs/1", headers={"Cookie": f"{COOKIE}={cookie}"}
        ) as ws,
    ):
        ws.receive_text()
    assert closed.value.code == 4401


def test_signing_out_of_the_dashboard_ends_the_session_too(admin_client: TestClient) -> None:
    cookie, csrf = _sign_in(admin_client)
    assert _as(admin_client, cookie, "GET", "/runs", headers=HTML).status_code == 200
    out = _as(admin_client, cookie, "POST", "/logout", data={"csrf_token": csrf}, headers=HTML)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    page = _as(admin_client, cookie, "GET", "/runs", headers=HTML)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert _as(admin_client, cookie, "GET", "/api/v1/me").status_code == 401


def test_signing_out_in_one_browser_leaves_the_others_signed_in(admin_client: TestClient) -> None:
    laptop, laptop_csrf = _sign_in(admin_client)
    phone, _ = _sign_in(admin_client)
    out = _as(
        admin_client, laptop, "DELETE", "/api/v1/session", headers={"X-CSRF-Token": laptop_csrf}
    )
    assert out.status_code == 204
    assert _as(admin_client, phone, "GET", "/api/v1/me").status_code == 200
    assert _as(admin_client, laptop, "GET", "/api/v1/me").status_code == 401


def test_signing_in_starts_a_new_session_and_csrf_token(admin_client: TestClient) -> None:
    """No fixation: what a visitor's cookie held before sign-in is not the signed-in session."""
    admin_client.cookies.clear()
    before_csrf = _page_csrf(admin_client)
    before = admin_client.cookies.get(COOKIE)
    assert before
    signed_in = admin_client.post(
        "/login",
        data={"email": ADMIN, "password": PASSWORD, "csrf_token": before_csrf},
        headers=HTML,
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    after = admin_client.cookies.get(COOKIE)
    assert after and after != before
    assert _page_csrf(admin_client, "/runs") != before_csrf
    assert _as(admin_client, before, "GET", "/api/v1/me").status_code == 401


def test_a_deactivated_users_session_stops_working(admin_client: TestClient) -> None:
    from app.db.models import User
    from app.db.session import session_scope

    cookie, _ = _sign_in(admin_client)
    with session_scope() as session:
        user = session.query(User).filter_by(email=ADMIN).one()
        user.is_active = False
    assert _as(admin_client, cookie, "GET", "/api/v1/me").status_code == 401


def test_setup_after_the_first_admin_cannot_create_another_admin(admin_client: TestClient) -> None:
    from sqlalchemy import func, select

    from app.db.models import User
    from app.db.session import session_scope

    again = admin_client.post(
        "/api/v1/setup", json={"email": "evil@example.com", "password": PASSWORD}
    )
    assert again.status_code == 409
    admin_client.cookies.clear()
    assert (
        admin_client.get("/setup", headers=HTML, follow_redirects=False).headers["location"]
        == "/login"
    )
    form = admin_client.post(
        "/setup",
        data={
            "email": "evil2@example.com",
            "password": PASSWORD,
            "csrf_token": _page_csrf(admin_client),
        },
        headers=HTML,
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"] == "/login"
    assert admin_client.get("/api/v1/me").status_code == 401, "the refused setup signed someone in"
    with session_scope() as session:
        emails = set(session.scalars(select(User.email)))
        admins = session.scalar(select(func.count()).select_from(User).where(User.is_admin))
    assert emails == {ADMIN} and admins == 1
