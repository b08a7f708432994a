"""An entity (NER) model tried in Chromium: the classifier playground switches to its entity
mode, the entities of a Chinese and English text come back highlighted with their types and
character offsets, answered by the real inference process (a hand-built model whose answer is
known, nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import served_models
from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    PHONE,
    Server,
    _shot,
    assert_pages_fit,
)
from tests.serving.conftest import build_tiny_ner_model

pytestmark = pytest.mark.browser
browser = served_models.browser
no_console_errors = served_models.no_console_errors
server = served_models.server


@pytest.fixture(scope="module")
def entity_model(server: Server) -> str:
    """A finished run whose final model is the hand-built entity model, registered."""
    [serving_name] = served_models.register_finished_runs(
        server, [("entities", build_tiny_ner_model)]
    )
    return serving_name


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
