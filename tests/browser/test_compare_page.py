"""The compare page in a real browser: tick two runs in the runs list, press Compare, see both
curves drawn (by step, then by time, smoothed) and the table of settings that differ.

Its own installation (the `server` fixture of the main browser flows, imported), set up through
the JSON API; the runs' metrics are written with the worker's own service function.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    ADMIN_EMAIL,
    CONSOLE_ERRORS,
    Server,
    _expect_http_error,
    _shot,
    _sign_in,
    _watch,
)

pytestmark = pytest.mark.browser
# The main flows' fixtures, under the names pytest looks for: one uvicorn and one Chromium for
# this module, and its check that the browser console stays free of errors.
server = flows.server
browser = flows.browser
no_console_errors = flows.no_console_errors


@pytest.fixture(scope="module")
def two_runs(server: Server) -> tuple[int, int]:
    """The first admin, a dataset and two runs differing in learning rate, with metrics."""
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        csrf, dataset_id = flows.first_admin_with_dataset(api)
        ids = []
        for lr in (0.001, 0.0003):
            launched = api.post(
                "/api/v1/runs",
                json={
                    "dataset_id": dataset_id,
                    "name": f"lr {lr}",
                    "config": {"learning_rate": lr},
                },
                headers=csrf,
            )
            assert launched.status_code == 201, launched.text
            ids.append(int(launched.json()["id"]))
    for scale, run_id in zip((1.0, 2.0), ids, strict=True):
        points = [(s, "train_loss", scale * 5.0 / s) for s in range(1, 301)]
        with session_scope() as session:
            run_execution.write_metrics(session=session, run_id=run_id, points=points)
    return ids[0], ids[1]


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=server.base_url)
    yield _watch(context.new_page())
    context.close()


def test_ticking_two_runs_and_comparing_overlays_their_curves_and_lists_what_differs(
    page: Page, two_runs: tuple[int, int]
) -> None:
    first, second = two_runs
    page.goto("/login")
    _sign_in(page, ADMIN_EMAIL)
    page.goto("/runs")
    page.get_by_label("Compare lr 0.001", exact=True).check()
    page.get_by_label("Compare lr 0.0003", exact=True).check()
    page.get_by_test_id("compare-runs").click()

    expect(page).to_have_url(f"/compare?run={second}&run={first}")  # the list is newest first
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
    legend = page.locator("#compare-chart .u-legend")
    expect(legend).to_contain_text("lr 0.001")
    expect(legend).to_contain_text("lr 0.0003")
    expect(page.locator("#compare-note")).to_contain_text("600 points")
    diff_rows = page.get_by_test_id("config-diff").locator("tbody tr")
    expect(diff_rows).to_have_count(1)
    expect(diff_rows.first).to_contain_text("learning_rate")
    expect(diff_rows.first).to_contain_text("0.0003")
    expect(page.get_by_test_id("final-metrics")).to_contain_text("train_loss")
    _shot(page, "compare")

    page.locator("#compare-align").select_option("time")
    expect(page.locator("#compare-chart .u-legend")).to_contain_text("time")
    page.locator("#compare-smoothing").fill("0")
    expect(page.locator("#compare-smoothing-value")).to_have_text("0.00")
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
    assert CONSOLE_ERRORS == []


def test_curves_the_server_refuses_say_what_the_server_said(
    browser: Browser, server: Server, two_runs: tuple[int, int]
) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    first, second = two_runs
    with session_scope() as session:  # a second metric: choosing it fetches its curves
        points = [(s, "val_loss", 3.0 / s) for s in range(1, 11)]
        run_execution.write_metrics(session=session, run_id=first, points=points)
    with flows.signed_in_page(browser, server.base_url) as page:
        page.goto(f"/compare?run={first}&run={second}")
        expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
        page.context.clear_cookies()  # the session ends while the page is open
        _expect_http_error("/api/v1/compare/series", 401)
        page.get_by_test_id("compare-metric").select_option("val_loss")
        expect(page.locator("#compare-empty")).to_have_text(
            "Could not load the curves: authentication required: "
            "sign in or send 'Authorization: Bearer <token>'"
        )
    assert CONSOLE_ERRORS == []
