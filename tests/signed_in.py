"""Sign a persona's test client in as a browser would (cookie session, CSRF token), for tests
of pages and their forms."""

from __future__ import annotations

import re

from tests.conftest import PASSWORD, Persona

HTML = {"Accept": "text/html"}


def sign_in(persona: Persona, password: str = PASSWORD) -> str:
    """Sign `persona`'s client in with a browser session in their workspace; the CSRF token."""
    client = persona.client
    client.cookies.clear()
    page = client.get("/login", headers=HTML).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    data = {"email": persona.email, "password": password, "csrf_token": csrf.group(1)}
    assert client.post("/login", data=data, follow_redirects=False).status_code == 303
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/", headers=HTML).text)
    assert token
    switched = client.post(
        "/workspace",
        data={"workspace_id": str(persona.workspace_id), "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert switched.status_code == 303
    return token.group(1)
