"""Validates response bodies against OpenAI's published schema (openai-api/, spec 2.3.0)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# A vendored copy (MIT, see openai-api/LICENSE) so the tests need nothing outside the repo.
SCHEMA_PATH = Path(
    os.environ.get(
        "LLMIDE_OPENAI_SCHEMA", Path(__file__).parent / "openai-api" / "openapi-subset.json"
    )
)
_BASE = "urn:openai-openapi-subset"


def _as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 leftovers in the document, rewritten as JSON Schema 2020-12.

    `nullable: true` becomes "or null"; a boolean `exclusiveMinimum` becomes a number.
    """
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_json_schema(value) for key, value in node.items()}
    if out.get("exclusiveMinimum") is True and "minimum" in out:
        out["exclusiveMinimum"] = out.pop("minimum")
    elif isinstance(out.get("exclusiveMinimum"), bool):
        out.pop("exclusiveMinimum")
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _registry() -> Registry:
    document = _as_json_schema(json.loads(SCHEMA_PATH.read_text()))
    return Registry().with_resource(_BASE, Resource(document, specification=DRAFT202012))


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{_BASE}#/components/schemas/{name}"}, registry=_registry()
    )


def assert_schema(body: Any, name: str) -> Any:
    """Assert `body` matches the component schema `name`; returns the body."""
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
    )
    return body


def assert_openai_error(response: Any, status_code: int) -> dict[str, Any]:
    """Assert an OpenAI-shaped error with this status; returns its `error` object."""
    assert response.status_code == status_code, response.text
    body = assert_schema(response.json(), "ErrorResponse")
    return body["error"]
