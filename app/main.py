"""The web application: JSON API, OpenAI facade, pages, websockets. Never loads torch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from app.api.router import api_router
from app.core import error_handlers
from app.core.middleware import (
    BodySizeLimitMiddleware,
    ClientAddressMiddleware,
    FrameGuardMiddleware,
    JsonBodyGuardMiddleware,
    OriginCheckMiddleware,
)
from app.core.settings import Settings, get_settings
from app.realtime.credentials import CredentialWatch
from app.realtime.hub import RunUpdateHub
from app.realtime.routes import router as realtime_router
from app.web.rendering import PROJECT_ROOT, render_error_page

SESSION_COOKIE = "llmide_session"


def _body_limit(settings: Settings) -> int:
    # Room for the multipart envelope around a file of exactly the upload limit.
    return settings.max_upload_bytes + 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    hub = RunUpdateHub(
        redis_url=settings.redis_url, poll_interval_s=settings.metrics_poll_interval_s
    )

    credential_watch = CredentialWatch()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        await credential_watch.start()
        reconciler = None
        if settings.deployment_reconcile_interval_s > 0:
            # Deployments come back by themselves after an inference restart (docs/serving.md).
            from app.services.serving.reconcile import reconcile_forever

            reconciler = asyncio.create_task(
                reconcile_forever(settings.deployment_reconcile_interval_s)
            )
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciler
            await credential_watch.stop()
            await hub.stop()

    app = FastAPI(
        title="LLM IDE",
        version="0.1.0",
        description="Train, register and serve language models. Native API under /api/v1; "
        "OpenAI-compatible API under /v1.",
        lifespan=lifespan,
        # The schema and docs are served by app/api/routes/docs.py, behind authentication.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.hub = hub
    app.state.credential_watch = credential_watch
    app.state.settings = settings

    error_handlers.install(app, html_error_page=render_error_page)
    app.add_middleware(JsonBodyGuardMiddleware)  # innermost: after the origin and size checks
    app.add_middleware(OriginCheckMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=_body_limit(settings))
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.resolved_secret_key(),
        session_cookie=SESSION_COOKIE,
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    if "*" not in settings.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(ClientAddressMiddleware)
    # Outermost: even a refused host or an oversized body is answered unframeable.
    app.add_middleware(FrameGuardMiddleware)

    app.mount("/static", StaticFiles(directory=str(PROJECT_ROOT / "static")), name="static")
    app.include_router(api_router)
    app.include_router(realtime_router)
    _include_optional_routers(app)
    return app


def _include_optional_routers(app: FastAPI) -> None:
    from app.openai.router import openai_router
    from app.web.router import pages_router

    app.include_router(openai_router)
    app.include_router(pages_router)
