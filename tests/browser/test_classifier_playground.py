"""A trained classifier tried in Chromium: "Try in playground" from the registry opens the
classifier playground, a text goes in and the label and every class's probability come out,
answered by the real inference process (a tiny BERT classifier, built here, nothing downloaded).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import served_models
from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    ADMIN_EMAIL,
    LAPTOP,
    PASSWORD,
    PHONE,
    Server,
    _shot,
    assert_pages_fit,
)
from tests.serving.conftest import build_tiny_classifier

pytestmark = pytest.mark.browser
browser = served_models.browser
no_console_errors = served_models.no_console_errors
server = served_models.server


@pytest.fixture(scope="module")
def classifier(server: Server) -> str:
    """A finished run whose final model is a 2-class classifier, registered; its serving name."""
    [serving_name] = served_models.register_finished_runs(
        server, [("sentiment", build_tiny_classifier)]
    )
    return serving_name


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server, classifier: str) -> Iterator[Page]:
    with flows.signed_in_page(browser, server.base_url) as signed_in:
        yield signed_in


def test_a_classifier_is_tried_from_the_registry_with_its_label_and_probabilities(
    page: Page, classifier: str
) -> None:
    page.goto("/models")
    page.get_by_role("link", name="Try in playground").first.click()
    expect(page.get_by_role("heading", name="Classifier playground")).to_be_visible()
    expect(page.get_by_label("Classifier")).to_have_value(classifier)

    page.get_by_label("Text").fill("the cat sat on the mat")
    page.get_by_role("button", name="Classify").click()
    # The first answer loads the model in the inference process: allow it time.
    label = page.get_by_test_id("predicted-label")
    one_of_the_labels = re.compile("^(negative|positive)$")
    expect(label.locator("strong")).to_have_text(one_of_the_labels, timeout=60_000)
    rows = page.get_by_test_id("probabilities").locator("tbody tr")
    expect(rows).to_have_count(2)
    cells = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)]
    assert abs(sum(float(c) for c in cells) - 1) < 1e-3
    assert float(cells[0]) >= float(cells[1])
    # The predicted label is the first row: the most probable class.
    assert rows.nth(0).locator("td").first.inner_text() == label.locator("strong").inner_text()
    _shot(page, "classifier-playground")


def test_the_classifier_playground_fits_a_phone(page: Page, classifier: str) -> None:
    assert_pages_fit(page, [f"/playground/classify?model={classifier}"], PHONE)


def test_every_navigation_link_is_visible_on_a_phone(page: Page, classifier: str) -> None:
    page.set_viewport_size(PHONE)
    try:
        page.goto("/playground/classify")
        links = page.locator(".nav a")
        assert links.count() >= 12
        for i in range(links.count()):
            link = links.nth(i)
            expect(link).to_be_visible()
            box = link.bounding_box()
            inside = box is not None and 0 <= box["x"] <= PHONE["width"] - box["width"]
            assert inside, f"{link.inner_text()} is off-screen at {PHONE['width']} px: {box}"
        _shot(page, "nav-375")
    finally:
        page.set_viewport_size(LAPTOP)


def test_a_model_is_imported_in_chunks_with_progress_and_a_refusal_is_a_message(
    page: Page, classifier: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.registry.test_chunked_model_import import zipped_tiny_model

    data = zipped_tiny_model(tmp_path_factory.mktemp("import"))
    flows._expect_http_error("/api/v1/uploads/1/import-model", 400)  # the broken zip, on purpose
    page.goto("/models")
    page.get_by_text("Import a model").click()
    expect(page.get_by_test_id("import-size-hint")).to_contain_text("8 MB pieces")
    page.get_by_label("Registered model name").fill("broken")
    page.locator("#f-import-file").set_input_files(
        {"name": "broken.zip", "mimeType": "application/zip", "buffer": b"PK\x03\x04 broken"}
    )
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_test_id("import-message")).to_contain_text("Import refused:")
    assert "{" not in page.get_by_test_id("import-message").inner_text()  # no raw JSON
    _shot(page, "model-import-refused")

    page.get_by_label("Registered model name").fill("tiny-upload")
    page.locator("#f-import-file").set_input_files(
        {"name": "tiny.zip", "mimeType": "application/zip", "buffer": data}
    )
    page.get_by_role("button", name="Import").click()
    expect(page).to_have_url(re.compile(r"/models/versions/\d+$"), timeout=30_000)
    expect(page.get_by_role("heading", name=re.compile("tiny-upload"))).to_be_visible()


def test_a_classifier_evaluation_draws_its_curves_and_the_threshold_explorer_answers(
    page: Page, server: Server, classifier: str
) -> None:
    import json

    from workers.registry_tasks import evaluate_version

    rows = [
        {"text": f"headline number {i} about {('rain', 'stocks', 'football')[i % 3]}",
         "label": ("negative", "positive")[i % 2]}
        for i in range(12)
    ]  # fmt: skip
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        login = api.post("/api/v1/session", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
        data = "\n".join(json.dumps(r) for r in rows).encode()
        uploaded = api.post(
            "/api/v1/datasets", files={"file": ("labels.jsonl", data)}, headers=csrf
        )
        assert uploaded.status_code == 201, uploaded.text
        version = next(
            v for m in api.get("/api/v1/models").json() for v in m["versions"]
            if v["serving_name"] == classifier
        )  # fmt: skip
        queued = api.post(
            f"/api/v1/model-versions/{version['id']}/evaluations",
            json={"dataset_id": uploaded.json()["id"]},
            headers=csrf,
        )
        assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"

    page.goto(f"/models/versions/{version['id']}")
    figures = page.get_by_test_id("eval-figures")
    figures.locator("summary").click()
    # Three uPlot charts: ROC (curve + chance line), precision-recall, reliability.
    expect(figures.locator(".uplot")).to_have_count(3)
    expect(figures.locator('[data-figure="roc"]')).to_have_attribute("data-series", "1")
    cells = figures.get_by_test_id("threshold-explorer")
    expect(cells.locator('[data-cell="tp"]')).not_to_have_text("—")
    slider = cells.locator("[data-threshold]")
    slider.fill("0")
    # At threshold 0 every row is predicted positive: all positives found, none missed.
    expect(cells.locator("[data-threshold-value]")).to_have_text("0.00")
    expect(cells.locator('[data-cell="tp"]')).to_have_text("6")
    expect(cells.locator('[data-cell="fn"]')).to_have_text("0")
    expect(cells.locator('[data-cell="recall"]')).to_have_text("1.000")
    _shot(page, "classifier-curves")
