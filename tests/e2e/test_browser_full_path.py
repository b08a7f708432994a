"""A person's whole path in Chromium against the real product (`llmide serve`, real worker):
first admin, upload, launch, watch the chart grow, deploy, chat."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.browser.chromium import CHROMIUM, HAVE_CHROMIUM, checked_page
from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import PASSWORD, corpus

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

if not HAVE_CHROMIUM:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("browser-e2e") / "data") as srv:
        yield srv


@pytest.fixture
def page(server: Server) -> Iterator[Page]:
    with checked_page(server.base_url) as page:
        yield page


def test_a_person_uploads_trains_watches_deploys_and_chats_in_the_browser(page: Page) -> None:
    page.goto("/")
    page.get_by_label("E-mail").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create administrator").click()
    expect(page).to_have_url("/")

    page.goto("/datasets")
    page.locator("#upload-form input[type=file]").set_input_files(
        {"name": "corpus.jsonl", "mimeType": "application/jsonl", "buffer": corpus(400)}
    )
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    expect(page.get_by_text("corpus.jsonl").first).to_be_visible()

    page.goto("/runs/new")
    page.get_by_label("Max steps (optional)").fill("40")
    page.get_by_label("Sequence length (tokens)").fill("32")
    page.get_by_label("Learning rate").fill("0.003")
    page.get_by_label("Model suffix (optional)").fill("browser")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))

    # The chart grows while the worker trains, then the run ends and links its model.
    points = page.locator("#point-count")
    expect(points).not_to_have_text("0", timeout=120_000)
    first_seen = int(points.inner_text())
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=120_000)
    assert int(points.inner_text()) == 40 > first_seen
    expect(page.get_by_test_id("model-link")).to_contain_text("browser")

    page.goto("/models")
    page.get_by_test_id("deploy").first.click()
    expect(page.locator(".deploy-msg").first).to_contain_text("Loading")
    page.get_by_role("link", name="Deployments").last.click()
    expect(page.locator("#deployments-table")).to_contain_text("ready", timeout=60_000)

    page.goto("/playground")
    page.locator("#pg-max-tokens").fill("8")
    page.locator("#pg-temperature").fill("0")
    page.locator("#chat-input").fill("the cat sat")
    page.locator("#chat-send").click()
    answer = page.locator(".bubble.assistant").last
    expect(answer.locator(".meta")).to_contain_text("tokens", timeout=60_000)
    assert answer.inner_text().strip()
