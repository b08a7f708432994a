"""Chinese renders as text, not as boxes: a Chinese classification dataset's preview and label
chart and a Chinese chat dataset's conversation, uploaded and shown in the real browser.

How "rendered" is told from "tofu": an ideograph drawn by a CJK font is a full-width square
(its advance is about one em); a character no font covers is drawn as the fallback font's
missing-glyph box, about 0.6 em wide. Without fonts-noto-cjk (Makefile system-deps) every check
here fails; the fonts Chromium used are named in the failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser import test_browser_flows as flows
from tests.browser.test_browser_flows import ADMIN_EMAIL, PASSWORD, Server, _sign_in, _upload

pytestmark = pytest.mark.browser
server = flows.server
browser = flows.browser

FULL_WIDTH = 0.85  # of the font size; a missing-glyph box is ~0.6

# Each Han character's advance and font size, in an HTML element's text or an SVG <text>.
GLYPH_WIDTHS = """(element) => {
  const han = /\\p{Script=Han}/u;
  const out = [];
  const size = (node) => parseFloat(getComputedStyle(node).fontSize);
  if (element instanceof SVGTextContentElement) {
    const text = element.textContent;
    for (let i = 0; i < text.length; i++) {
      if (han.test(text[i])) out.push([text[i], element.getExtentOfChar(i).width, size(element)]);
    }
    return out;
  }
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.data.length; i++) {
      if (!han.test(node.data[i])) continue;
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      out.push([node.data[i], range.getBoundingClientRect().width, size(node.parentElement)]);
    }
  }
  return out;
}"""


def fonts_used(page: Page, selector: str) -> list[str]:
    """The platform fonts Chromium drew the element's text with (for the failure message)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return [f"{f['familyName']} ({f['glyphCount']} glyphs)" for f in fonts]


def assert_renders_chinese(page: Page, locator: Locator, selector: str) -> None:
    widths = locator.evaluate(GLYPH_WIDTHS)
    assert widths, f"no Chinese text in {selector}"
    boxes = [
        (char, round(width / size, 2)) for char, width, size in widths if width < FULL_WIDTH * size
    ]
    assert not boxes, (
        f"{selector}: {len(boxes)} of {len(widths)} Chinese characters drawn narrower than a "
        f"CJK glyph (missing-glyph boxes?) {boxes[:5]}; fonts: {fonts_used(page, selector)}"
    )


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with httpx.Client(base_url=server.base_url, timeout=30) as api:
        setup = api.post("/api/v1/setup", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        assert setup.status_code == 201, setup.text
    context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=server.base_url)
    page = context.new_page()
    page.goto("/login")
    _sign_in(page, ADMIN_EMAIL)
    expect(page).not_to_have_url("/login")
    yield page
    context.close()


def test_a_chinese_classification_datasets_preview_and_label_chart_render_as_text(
    page: Page,
) -> None:
    rows = [
        {"text": "这部电影非常精彩，演员的表演令人难忘", "label": "正面"},
        {"text": "剧情拖沓，浪费了两个小时", "label": "负面"},
        {"text": "音乐很美，画面也很漂亮", "label": "正面"},
        {"text": "服务态度差，再也不来了", "label": "负面"},
    ] * 3
    page.goto("/datasets")
    _upload(page, "影评.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    expect(page.get_by_test_id("upload-success")).to_contain_text("12 rows")
    page.locator("#dataset-table").get_by_role("link", name="影评.jsonl").click()
    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
    preview = page.get_by_test_id("preview")
    expect(preview).to_contain_text("演员的表演")
    assert_renders_chinese(page, preview.locator("pre").first, "[data-testid=preview] pre")
    assert_renders_chinese(
        page, preview.locator(".n strong").first, "[data-testid=preview] .n strong"
    )  # the row's label
    label = page.get_by_test_id("labels-chart").locator("text").first
    expect(label).to_have_text("正面")
    assert_renders_chinese(page, label, "[data-testid=labels-chart] text")


def test_a_chinese_chat_datasets_conversation_renders_as_text(page: Page) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "你好，请介绍一下长城。"},
                {"role": "assistant", "content": "长城是中国古代的军事防御工程。"},
            ]
        }
    ] * 4
    page.goto("/datasets")
    _upload(page, "对话.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    expect(page.get_by_test_id("upload-success")).to_contain_text("4 rows")
    page.locator("#dataset-table").get_by_role("link", name="对话.jsonl").click()
    message = page.get_by_test_id("preview").locator(".msg .content").nth(1)
    expect(message).to_have_text("长城是中国古代的军事防御工程。")
    assert_renders_chinese(page, message, "[data-testid=preview] .msg .content")
