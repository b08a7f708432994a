"""An open run chart ends with its credential: a revoked token's or a signed-out browser's
websocket is closed (4401) by itself, with no new data needed to notice, and is sent nothing
new after the credential ended."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import PASSWORD, Team, text_jsonl

HANG_GUARD_S = 60  # only against a hang: the watch closes sockets within a second


def queued_run(team: Team) -> int:
    """A run that stays queued (no worker here): nothing about it changes by itself."""
    dataset = team.owner.upload("corpus.jsonl", text_jsonl(8)).json()
    run = team.owner.post(
        "/api/v1/runs", json={"dataset_id": dataset["id"], "config": {"max_steps": 2}}
    )
    assert run.status_code == 201, run.text
    return int(run.json()["id"])


def read_until_status(ws: Any) -> None:
    message = ws.receive_json()
    while message["type"] != "status":  # the first batch ends with the run's status
        message = ws.receive_json()


def close_code_while_idle(ws: Any) -> int | None:
    """The close code the socket gets while nothing happens to its run (None: still open)."""
    outcome: dict[str, Any] = {}

    def receive() -> None:
        try:
            while True:
                outcome.setdefault("messages", []).append(ws.receive_json())
        except WebSocketDisconnect as closed:
            outcome["code"] = closed.code

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    reader.join(HANG_GUARD_S)
    assert not outcome.get("messages"), outcome  # an idle queued run has nothing to send
    return outcome.get("code")


def test_revoking_a_token_closes_its_open_run_chart_while_nothing_else_happens(
    backend: str, team: Team, client: TestClient
) -> None:
    run_id = queued_run(team)
    second = team.editor.post("/api/v1/tokens", json={"name": "chart"}).json()
    headers = {**team.editor.headers, "Authorization": f"Bearer {second['token']}"}
    with client.websocket_connect(f"ws://127.0.0.1/ws/runs/{run_id}", headers=headers) as ws:
        read_until_status(ws)
        assert team.editor.delete(f"/api/v1/tokens/{second['id']}").status_code == 204
        assert close_code_while_idle(ws) == 4401
    # the editor's other token is untouched, and so is its chart
    with client.websocket_connect(
        f"ws://127.0.0.1/ws/runs/{run_id}", headers=team.editor.headers
    ) as ws:
        read_until_status(ws)


def test_a_revoked_tokens_open_chart_is_sent_nothing_new(team: Team, client: TestClient) -> None:
    run_id = queued_run(team)
    second = team.editor.post("/api/v1/tokens", json={"name": "chart"}).json()
    headers = {**team.editor.headers, "Authorization": f"Bearer {second['token']}"}
    with client.websocket_connect(f"ws://127.0.0.1/ws/runs/{run_id}", headers=headers) as ws:
        read_until_status(ws)
        assert team.editor.delete(f"/api/v1/tokens/{second['id']}").status_code == 204
        assert team.owner.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                message = ws.receive_json()
                assert message.get("status") != "cancelled", "a revoked token saw the cancel"
    assert closed.value.code == 4401


def test_signing_out_closes_the_browsers_open_run_chart(
    backend: str, team: Team, client: TestClient
) -> None:
    run_id = queued_run(team)
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": team.editor.email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    cookie = {"Cookie": f"llmide_session={client.cookies.get('llmide_session')}"}
    csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
    client.cookies.clear()
    url = f"ws://127.0.0.1/ws/runs/{run_id}?workspace={team.editor.workspace_id}"
    with client.websocket_connect(url, headers=cookie) as ws:
        read_until_status(ws)
        out = client.delete("/api/v1/session", headers={**cookie, **csrf})
        assert out.status_code == 204
        assert close_code_while_idle(ws) == 4401
