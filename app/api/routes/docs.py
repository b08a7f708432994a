"""API docs (Swagger UI from vendored files) and the OpenAPI schema, for signed-in users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from app.api.deps import CurrentUser

router = APIRouter(tags=["docs"], include_in_schema=False)

SWAGGER = "/static/vendor/swagger-ui-dist-5.35.0"


@router.get("/openapi.json")
def openapi_schema(request: Request, user: CurrentUser) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(user: CurrentUser) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="LLM IDE API",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
    )
