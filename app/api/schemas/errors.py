"""The error answers of the native API and the OpenAI facade, declared in the OpenAPI
schema once per router."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ApiError(BaseModel):
    """Every error of the native API (app/core/error_handlers.py), validation errors included."""

    detail: str = Field(description="What went wrong, in words a person can act on.")
    code: str | None = Field(default=None, description="A stable machine-readable code.")
    param: str | None = Field(default=None, description="The field at fault, if one is.")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape, answered by everything under /v1."""

    error: OpenAIErrorBody


_ERROR_WORDS = {
    400: "Invalid request",
    401: "Not signed in, or the token is invalid or revoked",
    403: "Not allowed (role too low, CSRF token or origin refused)",
    404: "Not found (or not in your workspace)",
    409: "Conflicts with the current state",
    413: "Request body over the upload limit",
    422: "A parameter or the body failed validation",
    429: "Too many attempts; retry later",
    503: "A dependency (inference server, broker) is unavailable; retry later",
}


def error_responses(model: type[BaseModel], codes: tuple[int, ...]) -> dict[int | str, Any]:
    """The error answers every route may give, declared once per router (the OpenAPI schema
    otherwise only names FastAPI's default 422, whose shape ours is not)."""
    return {code: {"model": model, "description": _ERROR_WORDS[code]} for code in codes}


API_ERRORS = error_responses(ApiError, (400, 401, 403, 404, 409, 413, 422, 429, 503))


OPENAI_ERRORS = error_responses(OpenAIError, (400, 401, 403, 404, 409, 413, 429, 503))
