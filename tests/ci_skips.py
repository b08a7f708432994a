"""A pytest plugin: under CI (the `CI` environment variable set, as CI services do), a test
that would skip because Postgres, Redis or docker-compose is missing fails instead.

Those services are present in CI, so such a skip means the run covers less than it claims:
a green `make test` there must have run the Postgres, Redis and compose tests. Locally the
skips stay skips. Loaded by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Words in a skip's reason that name a service CI provides.
SERVICES = ("Postgres", "Redis", "redis-server", "docker-compose")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    reason = (
        str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    )
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if any(service in reason for service in SERVICES):
            report.outcome = "failed"
            report.longrepr = f"CI is set, so this test may not skip: {reason}"
