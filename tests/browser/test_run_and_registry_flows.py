"""The flows the main browser module leaves out, in Chromium: cancel a run, register a checkpoint
from the run page, promote it with the stage buttons, tick runs to compare and send a dataset in
chunks — the last three from the keyboard alone, with the focus visible at every stop.

Its own installation (the main flows' `running_app`, with a small upload limit so that a 100 kB
file takes the chunked path), seeded through the JSON API; a run's checkpoints and outcome are
written with the worker's own service functions, so no worker (and no training) is needed.
The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, FileChooser, Page, Route, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import (
    _FOCUS_SHOWN,
    ADMIN_EMAIL,
    LAPTOP,
    PHONE,
    Server,
    _shot,
    _wait_until,
    assert_pages_fit,
    overflow,
    running_app,
)

pytestmark = pytest.mark.browser
# One Chromium for the module and the main flows' check that the browser console stays clean.
browser = flows.browser
no_console_errors = flows.no_console_errors
UPLOAD_LIMIT = 64 * 1024  # files over half of it go in chunks (templates/datasets.html)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    with running_app(
        tmp_path_factory, sqlite_template, LLMIDE_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT)
    ) as srv:
        yield srv


def _tiny_safetensors() -> bytes:
    """A valid safetensors file holding one float32 tensor of two values."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 0.5, -0.5)


def _checkpoint(run_id: int, name: str) -> str:
    """A checkpoint folder as the trainer leaves it (config + safetensors); its storage key."""
    from app.services import artifacts

    folder = artifacts.resolve(f"{artifacts.run_dir_key(run_id)}/{name}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(_tiny_safetensors())
    return artifacts.key_for(folder)


@pytest.fixture(scope="module")
def runs(server: Server) -> dict[str, int]:
    """The first admin, a dataset, a finished run with a mid-way checkpoint and a queued run."""
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        csrf, dataset_id = flows.first_admin_with_dataset(api)
        ids = {}
        for name in ("trained", "waiting"):
            launched = api.post(
                "/api/v1/runs",
                json={"dataset_id": dataset_id, "name": name, "config": {}},
                headers=csrf,
            )
            assert launched.status_code == 201, launched.text
            ids[name] = int(launched.json()["id"])

    trained = ids["trained"]
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=trained, task_id="browser-test")
        run_execution.write_metrics(
            session=session,
            run_id=trained,
            points=[(s, "train_loss", 4.0 / s**0.3) for s in range(1, 21)],
        )
        run_execution.record_checkpoint(
            session=session,
            run_id=trained,
            step=10,
            storage_key=_checkpoint(trained, "checkpoint-10"),
            metrics={"train_loss": 2.0},
        )
        run_execution.update_progress(session=session, run_id=trained, step=20, total_steps=20)
        run_execution.finish(
            session=session,
            run_id=trained,
            status=RunStatus.succeeded,
            final_checkpoint_key=_checkpoint(trained, "final"),
            final_step=20,
            final_metrics={"train_loss": 1.6},
        )
    return ids


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server, runs: dict[str, int]) -> Iterator[Page]:
    with flows.signed_in_page(browser, server.base_url) as signed_in:
        yield signed_in


def _key_to(page: Page, selector: str, key: str = "Tab", max_presses: int = 60) -> None:
    """Press Tab (or Shift+Tab) until `selector` has the focus; every stop must show focus."""
    unseen = []
    for _ in range(max_presses):
        page.keyboard.press(key)
        focused = page.evaluate(_FOCUS_SHOWN)
        if focused is not None and not focused["shown"]:
            unseen.append(focused)
        if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
            assert not unseen, f"focus is invisible on {unseen}"
            return
    raise AssertionError(f"{selector} never got the focus")


def test_cancelling_a_queued_run_asks_first_and_then_ends_it(
    page: Page, runs: dict[str, int]
) -> None:
    page.goto(f"/runs/{runs['waiting']}")
    expect(page.locator("#run-status")).to_have_text("queued")
    asked: list[str] = []

    def answer(accept: bool) -> None:
        def handle(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", handle)

    answer(accept=False)  # "Cancel run waiting?" → no: nothing is sent
    page.get_by_test_id("cancel-run").click()
    _wait_until(page, lambda: len(asked) == 1)
    assert asked == ["Cancel run waiting?"]
    expect(page.locator("#run-status")).to_have_text("queued")

    answer(accept=True)
    page.get_by_test_id("cancel-run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.get_by_test_id("cancel-run")).to_have_count(0)
    expect(page.locator("#run-log")).to_contain_text(f"cancellation requested by {ADMIN_EMAIL}")
    _shot(page, "run-cancelled")


def test_a_checkpoint_is_registered_from_the_run_page(
    page: Page, server: Server, runs: dict[str, int]
) -> None:
    page.goto(f"/runs/{runs['trained']}")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    page.get_by_test_id("register-10").click()
    expect(page).to_have_url(re.compile(r"/models/versions/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("v2")  # v1: the final one
    expect(page.get_by_test_id("stage")).to_have_text("no stage")
    expect(page.locator("dl.meta").first).to_contain_text("step 10 (checkpoint)")
    server.state["version_id"] = int(page.url.rsplit("/", 1)[-1])
    _shot(page, "model-version")

    page.goto(f"/runs/{runs['trained']}")  # the button became a link to the version
    expect(page.get_by_test_id("register-10")).to_have_count(0)
    expect(page.get_by_role("link", name="v2", exact=True)).to_be_visible()


def test_the_stage_buttons_promote_and_archive_from_the_keyboard(
    page: Page, server: Server
) -> None:
    page.goto(f"/models/versions/{server.state['version_id']}")
    page.locator("body").focus()
    _key_to(page, "input[name=reason]")
    page.keyboard.type("beats v1 on held-out loss")
    page.keyboard.press("Enter")  # no stage is chosen by the Enter key: nothing moves
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stage")).to_have_text("no stage")
    expect(page.get_by_text("Never moved.")).to_be_visible()
    expect(page.locator("input[name=reason]")).to_have_value("beats v1 on held-out loss")
    _key_to(page, "[data-testid=stage-production]")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("stage")).to_have_text("production")
    history = page.get_by_role("table").filter(has_text="Reason")
    expect(history).to_contain_text("beats v1 on held-out loss")
    expect(history).to_contain_text(ADMIN_EMAIL)
    expect(page.get_by_test_id("stage-production")).to_have_count(0)  # already there

    page.locator("body").focus()
    _key_to(page, "[data-testid=stage-archived]")
    page.keyboard.press("Space")
    expect(page.get_by_test_id("stage")).to_have_text("archived")
    expect(history.locator("tbody tr")).to_have_count(2)
    _shot(page, "model-version-archived")


def test_runs_are_ticked_and_compared_from_the_keyboard(page: Page, runs: dict[str, int]) -> None:
    page.goto("/runs")
    page.locator("body").focus()
    for name in ("waiting", "trained"):  # the list is newest first
        _key_to(page, f"#pick-run-{runs[name]}")
        page.keyboard.press("Space")
        expect(page.locator(f"#pick-run-{runs[name]}")).to_be_checked()
    _key_to(page, "[data-testid=compare-runs]", key="Shift+Tab")  # the button is above
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"/compare?run={runs['waiting']}&run={runs['trained']}")
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "1")  # one has data
    expect(page.get_by_test_id("final-metrics")).to_contain_text("train_loss")


def _big_jsonl(rows: int = 500, bad_line: int | None = None) -> bytes:
    lines = [json.dumps({"text": f"line {i} " + "words " * 30}) for i in range(rows)]
    if bad_line is not None:
        lines[bad_line - 1] = '{"text": broken}'
    content = ("\n".join(lines) + "\n").encode()
    assert len(content) > UPLOAD_LIMIT  # bigger than one request may be: only chunks get there
    return content


def test_a_chunked_upload_with_a_bad_line_names_the_line(page: Page) -> None:
    page.goto("/datasets")
    page.locator("#upload-form input[type=file]").set_input_files(
        {"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": _big_jsonl(bad_line=321)}
    )
    flows._expect_http_error("/api/v1/uploads/1/complete", 400)
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    error = page.locator("#upload-message [role=alert]")
    expect(error).to_contain_text("line 321")
    expect(error).to_contain_text("invalid JSON")
    expect(page.locator("#upload-progress")).to_be_hidden()  # no "checking rows…" left behind
    expect(page.locator("#upload-form button[type=submit]")).to_be_enabled()
    expect(page).to_have_url("/datasets")
    _shot(page, "datasets-chunked-error")


def _open_file_chooser_by_keyboard(page: Page) -> FileChooser:
    """Space on the focused file input opens the chooser; on a loaded machine Chromium can drop
    the first key before the focus settles, so Enter (which also opens it) is tried once more.
    Either way the chooser is opened from the keyboard."""
    for key in ("Space", "Enter"):
        try:
            with page.expect_file_chooser(timeout=15_000) as chooser:
                page.keyboard.press(key)
            return chooser.value
        except PlaywrightTimeoutError:
            page.focus("#upload-form input[type=file]")
    raise AssertionError("the file input never opened a file chooser from the keyboard")


def test_a_big_file_is_chosen_and_sent_in_chunks_from_the_keyboard_on_a_phone(
    page: Page, server: Server
) -> None:
    rows = _big_jsonl()
    held: list[Route] = []
    page.route("**/api/v1/uploads/*/complete", lambda route: held.append(route))
    page.set_viewport_size(PHONE)
    try:
        page.goto("/datasets")
        page.locator("body").focus()
        _key_to(page, "#upload-form input[type=file]")
        chooser = _open_file_chooser_by_keyboard(page)
        chooser.set_files({"name": "big.jsonl", "mimeType": "application/jsonl", "buffer": rows})
        _key_to(page, "#upload-form button[type=submit]")
        page.keyboard.press("Enter")

        # Every chunk is in; the last step (checking rows) is held to look at the progress.
        _wait_until(page, lambda: len(held) == 1)
        progress = page.locator("#upload-progress")
        expect(progress).to_be_visible()
        bar = progress.get_by_role("progressbar")
        expect(bar).to_have_attribute("aria-valuenow", "100")
        expect(bar.locator("span")).to_have_attribute("style", re.compile(r"width: 100%"))
        page.wait_for_timeout(500)  # the bar's width eases in over .4 s (for the screenshot)
        expect(page.get_by_test_id("upload-progress-text")).to_have_text("checking rows…")
        width, inner = overflow(page)
        assert width <= inner, f"the upload progress overflows a phone: {width} > {inner}"
        _shot(page, "datasets-chunked-progress-375")
        held[0].continue_()
        expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
        expect(page.get_by_role("heading", level=1)).to_contain_text("big")
        expect(page.locator("#versions-table")).to_contain_text("500")  # htmx-loaded panel
        server.state["dataset_path"] = urlpath(page.url)
    finally:
        page.unroute("**/api/v1/uploads/*/complete")
        page.set_viewport_size(LAPTOP)


def urlpath(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_the_pages_these_flows_fill_fit_laptop_and_phone_widths(
    page: Page, server: Server, runs: dict[str, int], viewport: dict[str, int]
) -> None:
    """The same check as the main flows' page list, on pages only these flows fill in:
    a version with stage history, a run with checkpoints, a cancelled run, a chunked dataset."""
    assert_pages_fit(
        page,
        [
            f"/models/versions/{server.state['version_id']}",
            f"/runs/{runs['trained']}",
            f"/runs/{runs['waiting']}",
            str(server.state["dataset_path"]),
            f"/compare?run={runs['waiting']}&run={runs['trained']}",
            "/models",
            "/settings/audit",
        ],
        viewport,
    )
