"""One rule for who commits (docs/architecture.md, "Transactions: who commits"): services flush,
the request dependency (`app/api/deps.get_session`) or the task's `session_scope()` commits.

Read with `ast`, so nothing is imported. Every module under `app/` that still calls
`.commit()` is listed below with how many times and why; a new commit anywhere else fails, and
so does one more in a listed module. A module that commits less than its allowance fails too,
asking for its number to be lowered, so the list only ever shrinks.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module path -> (commits allowed, why they stay)
ALLOWED_COMMITS: dict[str, tuple[int, str]] = {
    # The two units of work themselves.
    "app/db/session.py": (1, "session_scope(): the request's and every task's one commit"),
    # Work that leaves the process: the row must be committed before its task is sent (the
    # worker must find it), and a send the broker refuses is undone by deleting the row.
    "app/services/runs/service.py": (5, "before dispatch sends the run; undo after a refusal"),
    "app/services/runs/queue.py": (7, "the dispatcher's lock row lives one short transaction"),
    "app/services/sweeps/service.py": (5, "before a trial is dispatched; the periodic tick"),
    "app/services/datasets/prep.py": (4, "before the prep task is sent; worker progress"),
    "app/services/batches.py": (2, "before the batch task is sent; failed if it is refused"),
    # Worker-side progress other processes must see at once, each in its own short session.
    "app/services/runs/execution.py": (4, "claim, progress, checkpoints, finish (workers)"),
    "app/services/registry/jobs.py": (6, "export/evaluation jobs: sent tasks and their progress"),
    "app/services/task_deliveries.py": (2, "delivery counts survive the task's own rollback"),
    # Before a slow call to the inference server, and in the background reconcile loop.
    "app/services/serving/deployments.py": (6, "state others must see before an inference call"),
    "app/services/serving/reconcile.py": (1, "a switch every web process routes by, first"),
    # The sign-in throttle: its attempt row must survive the failed sign-in's rollback, and
    # its lock is taken by the first statement of a fresh transaction (docs/trust.md).
    "app/services/workspaces/login_throttle.py": (2, "failed attempts stay counted; lock ordering"),
    # Give the pooled connection back before a generation that may take minutes.
    "app/openai/generation.py": (1, "connection back during inference"),
    "app/openai/embeddings.py": (1, "connection back while a model loads"),
    "app/web/playground_pages.py": (1, "connection back during inference"),
}


def _commits() -> Counter[str]:
    found: Counter[str] = Counter()
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "commit"
            ):
                found[path.relative_to(ROOT).as_posix()] += 1
    return found


def test_services_and_routes_flush_and_only_the_listed_modules_commit() -> None:
    found = _commits()
    new = {m: n for m, n in found.items() if m not in ALLOWED_COMMITS}
    assert new == {}, (
        f"these modules commit: {new}. Services flush; the request's session (SessionDep) or "
        "the task's session_scope() commits. A commit that must stay goes in ALLOWED_COMMITS "
        "with its reason (docs/architecture.md, 'Transactions: who commits')."
    )
    more = {m: (n, ALLOWED_COMMITS[m][0]) for m, n in found.items() if n > ALLOWED_COMMITS[m][0]}
    assert more == {}, f"more commits than allowed (found, allowed): {more}"


def test_the_allow_list_only_shrinks() -> None:
    found = _commits()
    fewer = {
        m: (found.get(m, 0), allowed)
        for m, (allowed, _) in ALLOWED_COMMITS.items()
        if found.get(m, 0) < allowed
    }
    assert fewer == {}, f"fewer commits than listed (found, listed): lower ALLOWED_COMMITS: {fewer}"


def test_the_checker_counts_commit_calls() -> None:
    assert _commits()["app/db/session.py"] == 1
