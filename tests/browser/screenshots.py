"""Where the browser tests' screenshots land: never a fixed path that two xdist workers or two
checkouts running at once would write over.

`tests/browser/conftest.py` picks the folder once per test session (per xdist worker): the
folder named by LLMIDE_TEST_SHOTS when set, to keep a run's pictures where you will look at them,
else `shots` in the session's own pytest temp directory (`<basetemp>/shots`, under
`/tmp/pytest-of-<user>/` unless `--basetemp` names one; pytest keeps the last three).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

ENV_VAR = "LLMIDE_TEST_SHOTS"

_folder: Path | None = None


def choose_folder(session_temp: Path) -> Path:
    """The folder for this session's screenshots, created: $LLMIDE_TEST_SHOTS or `session_temp`."""
    global _folder
    configured = os.environ.get(ENV_VAR)
    _folder = Path(configured) if configured else session_temp
    _folder.mkdir(parents=True, exist_ok=True)
    return _folder


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot of `page` as `<name>.png` in this session's folder."""
    if _folder is None:
        raise RuntimeError("no screenshot folder: tests/browser/conftest.py chooses it")
    page.screenshot(path=str(_folder / f"{name}.png"), full_page=True)
