"""Session-wide setup of the browser tests: the folder their screenshots land in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import screenshots


@pytest.fixture(scope="session", autouse=True)
def screenshot_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$LLMIDE_TEST_SHOTS, else `shots` in this session's (this xdist worker's) temp directory."""
    return screenshots.choose_folder(tmp_path_factory.getbasetemp() / "shots")
