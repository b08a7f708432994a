"""Helpers every OpenAI-facade router shares: object ids, unix timestamps, inference errors."""

from __future__ import annotations

import json
import math
from calendar import timegm
from datetime import datetime
from typing import Any

from app.core.errors import DomainError, NotFound, ServiceUnavailable, ValidationFailed
from app.services.serving import inference_client

FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"
CHECKPOINT_PREFIX = "ftckpt-"
EVENT_PREFIX = "ftevent-"

# Ids are Integer columns: a larger number would be a database error, not a 404.
_MAX_ID = 2**31 - 1
INFERENCE_UNAVAILABLE = "the inference server is not reachable; retry shortly"


def unix(moment: datetime) -> int:
    """Seconds since the epoch of a naive UTC datetime (how the database stores time)."""
    return timegm(moment.utctimetuple())


def unix_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else unix(moment)


def parse_number(value: str, prefix: str) -> int | None:
    """The number in an id like `file-12`; None if the id is not one of ours."""
    if not value.startswith(prefix):
        return None
    digits = value[len(prefix) :]
    if not digits.isdigit() or len(digits) > 10 or int(digits) > _MAX_ID:
        return None
    return int(digits)


def parse_id(value: str, prefix: str, *, noun: str, param: str | None = None) -> int:
    """The database id behind an OpenAI-style id; a malformed id is just a missing object (404)."""
    number = parse_number(value, prefix)
    if number is None:
        raise NotFound(f"no such {noun}: {value!r}", param=param)
    return number


def finite(values: dict[str, Any]) -> dict[str, float]:
    """Drop NaN and infinities (a diverged run): JSON has no way to write them."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


class InferenceFailed(DomainError):
    """The inference server refused or failed a generation; carries its status code."""

    code = "inference_error"

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code
        if code:
            self.code = code
        self.retry_after_s = retry_after_s


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        # A FastAPI validation answer: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    return json.dumps(detail, default=str)


def _retry_after(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def inference_error(exc: Exception) -> DomainError:
    """The OpenAI-shaped error for a failure of the inference client."""
    if isinstance(exc, inference_client.ForeignInferenceServer):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, inference_client.InferenceUnavailable):
        return ServiceUnavailable(INFERENCE_UNAVAILABLE)
    if isinstance(exc, inference_client.InferenceError):
        detail = exc.detail
        retry_after = _retry_after(exc.retry_after)
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            # A refusal the server spelt out (context_length_exceeded, rate_limit_exceeded).
            return InferenceFailed(
                exc.status_code,
                detail["message"],
                param=detail.get("param"),
                code=detail.get("code"),
                retry_after_s=retry_after,
            )
        message = _detail_text(detail) or "the inference server failed"
        # The server validates with FastAPI (422); OpenAI answers invalid parameters with 400.
        if exc.status_code == 422:
            return ValidationFailed(message)
        return InferenceFailed(exc.status_code, message, retry_after_s=retry_after)
    raise TypeError(f"not an inference error: {exc!r}")
