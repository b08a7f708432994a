"""Schemathesis against the app's own OpenAPI schema: for every documented operation, generated
requests (valid and invalid, as the owner of a workspace with real things in it) never get a
5xx and never get a response that breaks what the schema declares (status, content type, body).

Run in-process (ASGI) on the embedded database, a bounded number of examples per operation.
Left out, with the reason:
- operations that need the inference server (deploying, chat and text completions): it is down
  in this test on purpose, so they answer a documented, retryable 503 (the authorization matrix
  and tests/inference cover them);
- revoking API tokens: a generated id would sooner or later revoke the very token the test
  authenticates with (tests/api and the matrix cover revocation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.security.conftest import Site

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXAMPLES = 10  # per operation and mode: ~30 operations x 2 modes stay within about a minute
SKIPPED = {
    ("POST", "/api/v1/deployments"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("DELETE", "/api/v1/tokens/{token_id}"),
}


@pytest.fixture(scope="module")
def api_schema(site: Site) -> Iterator[Any]:
    from schemathesis.python import asgi

    from app.main import create_app

    loaded = site.api("owner", "GET", "/openapi.json")
    assert loaded.status_code == 200, loaded.text
    schema = schemathesis.openapi.from_dict(loaded.json())
    # Its own app on the same installation: Schemathesis runs the app's lifespan itself.
    schema.app = create_app()
    yield schema.exclude(
        func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in SKIPPED
    )
    asgi.shutdown_lifespans()


def call_and_validate(case: Any, headers: dict[str, str]) -> None:
    # Not checked: that every schema-valid request is accepted. Many are refused by rules a
    # schema cannot state (a file's content, a base model's name, an id that must exist in
    # the workspace) with a clear 4xx, which is what the other checks then hold to the schema.
    case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx_or_breaks_its_declared_schema(
    api_schema: Any, site: Site, mode: GenerationMode
) -> None:
    """One Hypothesis search per operation; every failing operation is reported, not just one."""
    headers = site.persona("owner").headers
    failures: dict[str, str] = {}
    tried = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        tried += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same examples every run: CI stays reproducible
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            call_and_validate(case, headers)

        try:
            check()
        except Unsatisfiable:
            continue  # no schema-invalid request exists (no parameters, or any string goes)
        except (Exception, BaseExceptionGroup) as exc:  # reported per operation below
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:4000]
    assert tried > 20
    assert not failures, "\n\n".join(f"{label}\n{error}" for label, error in failures.items())
