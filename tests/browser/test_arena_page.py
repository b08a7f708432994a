"""The arena in Chromium: one prompt, two tiny chat models answering as "A" and "B" (streamed by
the real inference process), a vote that reveals who was who, and the leaderboard after it."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import served_models
from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import Server, _expect_http_error, _shot
from tests.inference.test_inference_server import build_tiny_model

pytestmark = pytest.mark.browser
browser = served_models.browser
no_console_errors = served_models.no_console_errors
server = served_models.server


@pytest.fixture(scope="module")
def two_models(server: Server) -> list[str]:
    """Two finished runs whose final models are tiny chat GPT-2s, registered; serving names."""
    names = served_models.register_finished_runs(
        server,
        [
            ("left", functools.partial(build_tiny_model, seed=0)),
            ("right", functools.partial(build_tiny_model, seed=1)),
        ],
    )
    return sorted(names)


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


def test_a_prompt_the_server_refuses_shows_its_reason_on_both_sides(
    page: Page, two_models: list[str]
) -> None:
    page.goto("/arena")
    _expect_http_error("/arena/stream", 422)
    page.get_by_label("Prompt").fill("x" * 32_001)  # over the server's limit of a message
    page.get_by_role("button", name="Send to both").click()
    for side in ("#arena-a", "#arena-b"):
        expect(page.locator(f"{side} .bubble.error")).to_have_text(
            "messages.0.content: String should have at most 32000 characters"
        )
