"""What the pages say when the server refuses: the server's own message, read by the one shared
reader (static/js/errors.js) from every error shape the server answers — `{"detail": "..."}`,
FastAPI's list of validation errors, OpenAI's `{"error": {"message": ...}}` under /v1 — and
"The request failed (HTTP <status>)." only when the body holds no message.

The pages that use it have their own refusals tested where they live: the arena
(`test_arena_page.py`), the compare page (`test_compare_page.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import ADMIN_EMAIL, PASSWORD, Server, _expect_http_error

pytestmark = pytest.mark.browser
server = flows.server
browser = flows.browser
no_console_errors = flows.no_console_errors

# Each case: (status, content type, body, what the page shows).
READ_IN_THE_BROWSER: list[tuple[int, str, str, str]] = [
    (400, "application/json", '{"detail": "a battle needs two chat models"}',
     "a battle needs two chat models"),
    (422, "application/json",
     '{"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "String too long"},'
     ' {"loc": ["query", "points"], "msg": "too small"}]}',
     "messages.0.content: String too long; points: too small"),
    (404, "application/json",
     '{"error": {"message": "no model named tiny", "type": "not_found_error", "param": "model",'
     ' "code": null}}',
     "no model named tiny"),
    (400, "text/plain; charset=utf-8", "Invalid host header", "Invalid host header"),
    (502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>",
     "The request failed (HTTP 502)."),
    (500, "application/json", '{"unexpected": true}', "The request failed (HTTP 500)."),
    (503, "application/json", "", "The request failed (HTTP 503)."),
]  # fmt: skip


@pytest.fixture(scope="module")
def admin(server: Server) -> str:
    """The installation's first admin (their e-mail)."""
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        setup = api.post("/api/v1/setup", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        assert setup.status_code == 201, setup.text
    return ADMIN_EMAIL


@pytest.fixture
def page(browser: Browser, server: Server, admin: str) -> Iterator[Page]:
    with flows.signed_in_page(browser, server.base_url) as signed_in:
        yield signed_in


def test_every_error_shape_the_server_answers_reads_as_its_message(page: Page) -> None:
    shown: list[Any] = page.evaluate(
        """async (cases) => Promise.all(cases.map(([status, type, body]) =>
            window.LLMIDE.errors.fromResponse(
                new Response(body, { status: status, headers: { "Content-Type": type } }))))""",
        [[status, ctype, body] for status, ctype, body, _ in READ_IN_THE_BROWSER],
    )
    assert shown == [expected for *_, expected in READ_IN_THE_BROWSER]


def test_a_streamed_error_event_reads_as_its_message(page: Page) -> None:
    shown = page.evaluate(
        """() => [window.LLMIDE.errors.fromEvent({ error: "the model is not loaded" }),
                  window.LLMIDE.errors.fromEvent({ error: { message: "context too long" } })]"""
    )
    assert shown == ["the model is not loaded", "context too long"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/v1/runs/999999", "run 999999 not found"),  # {"detail": ...}
        ("/v1/models/nope", "the model 'nope' does not exist in this workspace"),  # OpenAI's
    ],
)
def test_a_json_refusal_of_an_htmx_request_shows_the_servers_message_in_the_flash_area(
    page: Page, url: str, message: str
) -> None:
    # Page routes answer htmx with an HTML alert fragment; JSON reaches htmx from the APIs and
    # from the middlewares' refusals, and must become an alert, not raw JSON in the page.
    page.goto("/settings/tokens")
    _expect_http_error(url, 404)
    page.evaluate(
        """(url) => htmx.ajax("GET", url, { target: "#token-panel", swap: "outerHTML" })""", url
    )
    expect(page.locator("#flash").get_by_role("alert")).to_have_text(message)
    expect(page.locator("#token-panel")).to_contain_text("Your tokens")  # not swapped
