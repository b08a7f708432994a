"""The arena in Chromium: one prompt, two tiny chat models answering as "A" and "B" (streamed by
the real inference process), a vote that reveals who was who, and the leaderboard after it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    ADMIN_EMAIL,
    PASSWORD,
    Server,
    _free_port,
    _shot,
    running_app,
)
from tests.inference.test_inference_server import build_tiny_model
from tests.serving.conftest import inference_process

pytestmark = pytest.mark.browser
browser = flows.browser
no_console_errors = flows.no_console_errors
INFERENCE_PORT = _free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    with (
        running_app(
            tmp_path_factory, sqlite_template, LLMIDE_INFERENCE_PORT=str(INFERENCE_PORT)
        ) as srv,
        inference_process(srv.data_dir, INFERENCE_PORT),
    ):
        yield srv


@pytest.fixture(scope="module")
def two_models(server: Server) -> list[str]:
    """Two finished runs whose final models are tiny chat GPT-2s, registered; serving names."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services import artifacts
    from app.services.runs import execution as run_execution

    run_ids = []
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        csrf, dataset_id = flows.first_admin_with_dataset(api)
        for name in ("left", "right"):
            launched = api.post(
                "/api/v1/runs",
                json={"dataset_id": dataset_id, "name": name, "config": {}},
                headers=csrf,
            )
            assert launched.status_code == 201, launched.text
            run_ids.append(int(launched.json()["id"]))
    for seed, run_id in enumerate(run_ids):
        folder = artifacts.resolve(f"{artifacts.run_dir_key(run_id)}/final")
        build_tiny_model(folder, seed=seed)
        with session_scope() as session:
            assert run_execution.claim(session=session, run_id=run_id, task_id="browser-test")
            run_execution.finish(
                session=session,
                run_id=run_id,
                status=RunStatus.succeeded,
                final_checkpoint_key=artifacts.key_for(folder),
                final_step=1,
                final_metrics={},
            )
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        login = api.post("/api/v1/session", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        versions = [v for m in api.get("/api/v1/models").json() for v in m["versions"]]
    assert len(versions) == 2
    return sorted(str(v["serving_name"]) for v in versions)


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server, two_models: list[str]) -> Iterator[Page]:
    with flows.signed_in_page(browser, server.base_url) as signed_in:
        yield signed_in


def test_a_blind_battle_streams_both_answers_and_the_vote_reveals_the_models(
    page: Page, two_models: list[str]
) -> None:
    page.goto("/arena")
    page.get_by_label("Prompt").fill("hello there")
    page.get_by_role("button", name="Send to both").click()
    # Both sides answer (the first answer loads each model in the inference process).
    for side in ("#arena-a", "#arena-b"):
        answer = page.locator(f"{side} .bubble.assistant")
        expect(answer).to_have_count(1, timeout=60_000)
        expect(answer).not_to_have_class(re.compile("streaming"), timeout=60_000)
    expect(page.locator("#arena-a .arena-side")).to_have_text("Model A")  # still blind
    page.get_by_role("button", name="A is better").click()
    result = page.get_by_test_id("arena-result")
    expect(result).to_contain_text("A was ")
    revealed = result.inner_text()
    assert all(name in revealed for name in two_models), revealed
    _shot(page, "arena-voted")
    page.goto("/arena")
    rows = page.get_by_test_id("leaderboard").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("td").nth(5)).to_have_text("1")  # the winner's one win
