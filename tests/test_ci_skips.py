"""Under CI, a test that would skip for want of Postgres, Redis or docker-compose fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

def test_needs_postgres():
    pytest.skip("Postgres is not running on 127.0.0.1:5432")

@pytest.mark.skipif(True, reason="docker-compose not installed")
def test_needs_compose():
    pass

def test_needs_a_gpu():
    pytest.skip("no GPU on this machine")
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.ci_skips",
         "--rootdir", str(tmp_path), str(sample)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_under_ci_a_skip_for_a_missing_service_fails_and_other_skips_stay(tmp_path: Path) -> None:
    result = _run(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    # A skip in the test body fails it; a skipif marker (decided at setup) errors it.
    assert "1 failed, 1 skipped, 1 error" in result.stdout, result.stdout
    assert "CI is set, so this test may not skip: Postgres is not running" in result.stdout
    assert "CI is set, so this test may not skip: docker-compose" in result.stdout


def test_outside_ci_the_same_tests_skip(tmp_path: Path) -> None:
    result = _run(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "3 skipped" in result.stdout, result.stdout
    assert _run(tmp_path, "false").returncode == 0
