"""A pytest plugin: under pytest-xdist, the test files that start real processes go out first.

Run in parallel as the Makefile does (`pytest -n 3 --dist loadfile --no-loadscope-reorder`):
whole files go to the workers (so a module's fixtures stay in one process), in collection
order. Left to xdist, files go out largest first by number of tests, so the one-test end-to-end
files (a minute or more each: a web server, a worker, an inference process, Chromium) would
come last and one worker would still be running them long after the others had finished. Here
they come first: files marked e2e, then browser, then slow, then the rest, largest first as
xdist would (the tests of tests/serving, each with an inference process of its own, count as
slow). Within a file the order never changes (some browser modules build on their earlier
tests). A plain `pytest` run is left in its own order.
Loaded by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

# Markers of files that run long for their number of tests, longest-running kind first.
LONG_RUNNING = ("e2e", "browser", "slow")
# Fixtures that start a real process too (tests/serving: an inference process a test), ranked
# with "slow".
PROCESS_FIXTURES = ("serving_env",)


def _weight(item: pytest.Item) -> int:
    for rank, marker in enumerate(LONG_RUNNING):
        if item.get_closest_marker(marker) is not None:
            return rank
    if any(name in getattr(item, "fixturenames", ()) for name in PROCESS_FIXTURES):
        return LONG_RUNNING.index("slow")
    return len(LONG_RUNNING)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    files = [item.nodeid.split("::", 1)[0] for item in items]
    size = Counter(files)
    weight: dict[str, int] = {}
    for file, item in zip(files, items, strict=True):
        weight[file] = min(weight.get(file, len(LONG_RUNNING)), _weight(item))
    # sorted() is stable: each file's tests keep their order; all workers sort alike.
    order = sorted(range(len(items)), key=lambda i: (weight[files[i]], -size[files[i]], files[i]))
    items[:] = [items[i] for i in order]
