"""An entity (NER) model tried in Chromium: the classifier playground switches to its entity
mode, the entities of a Chinese and English text come back highlighted with their types and
character offsets, answered by the real inference process (a hand-built model whose answer is
known, nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    ADMIN_EMAIL,
    PASSWORD,
    PHONE,
    Server,
    _free_port,
    _shot,
    assert_pages_fit,
    running_app,
)
from tests.serving.conftest import build_tiny_ner_model, inference_process

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
def entity_model(server: Server) -> str:
    """A finished run whose final model is the hand-built entity model, registered."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services import artifacts
    from app.services.runs import execution as run_execution

    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        csrf, dataset_id = flows.first_admin_with_dataset(api)
        launched = api.post(
            "/api/v1/runs",
            json={"dataset_id": dataset_id, "name": "entities", "config": {}},
            headers=csrf,
        )
        assert launched.status_code == 201, launched.text
        run_id = int(launched.json()["id"])
    folder = artifacts.resolve(f"{artifacts.run_dir_key(run_id)}/final")
    build_tiny_ner_model(folder)
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
    assert len(versions) == 1
    return str(versions[0]["serving_name"])


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server, entity_model: str) -> Iterator[Page]:
    with flows.signed_in_page(browser, server.base_url) as signed_in:
        yield signed_in


def test_the_entities_of_a_chinese_and_english_text_are_highlighted_with_their_types(
    page: Page, entity_model: str
) -> None:
    page.goto("/models")
    page.get_by_role("link", name="Try in playground").first.click()
    expect(page.get_by_role("heading", name="Classifier playground")).to_be_visible()
    expect(page.get_by_label("Classifier")).to_have_value(entity_model)

    page.get_by_label("Text").fill("李明在北京工作，Ada lives in London。")
    page.get_by_role("button", name="Classify").click()
    # The first answer loads the model in the inference process: allow it time.
    marks = page.get_by_test_id("entity-text").locator("mark.entity")
    expect(marks).to_have_count(4, timeout=60_000)
    assert [marks.nth(i).get_attribute("data-label") for i in range(4)] == [
        "PER",
        "LOC",
        "PER",
        "LOC",
    ]
    # The text reads as written, each entity with its type beside it.
    expect(page.get_by_test_id("entity-text")).to_have_text(
        "李明PER在北京LOC工作，AdaPER lives in LondonLOC。"
    )
    rows = page.get_by_test_id("entities").locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(3)).to_contain_text("London")
    expect(rows.nth(3)).to_contain_text("21–27")
    _shot(page, "entity-playground")


def test_the_entity_playground_fits_a_phone(page: Page, entity_model: str) -> None:
    assert_pages_fit(page, [f"/playground/classify?model={entity_model}"], PHONE)
