"""Typed domain errors: raised by services, mapped once to HTTP answers (JSON, OpenAI or HTML)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a person can act on; `message` is shown to them verbatim."""

    status_code: int = 400
    code: str = "invalid_request"
    retry_after_s: int | None = None  # sent as Retry-After when set (429, 503)

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ValidationFailed(DomainError):
    status_code = 400
    code = "validation_failed"


class NotAuthenticated(DomainError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(DomainError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(DomainError):
    """A dependency (inference process, broker) is down; the client should retry."""

    status_code = 503
    code = "service_unavailable"
