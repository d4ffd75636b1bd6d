"""The application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from keyguard import __version__
from keyguard.api.auth import FORWARD_PATH, ForwardAuth, is_forward_auth, verify_router
from keyguard.api.errors import LastResort, install_error_handlers
from keyguard.api.keys import key_router
from keyguard.api.schemas import (
    ErrorResponse,
    component_schemas,
    create_request_model,
    forward_auth_document,
    update_request_model,
)
from keyguard.config import Settings, load_settings
from keyguard.middleware import KeyguardMiddleware
from keyguard.runtime import Keyguard


def _protected(path: str) -> bool:
    return path.startswith("/v1/")


def create_app(settings: Settings | None = None, keyguard: Keyguard | None = None) -> Any:
    """A keyguard ASGI app. Builds a :class:`Keyguard` from ``settings`` unless given one.

    The lifespan starts the snapshot refresh and the usage flusher, and on
    shutdown flushes ``last_used_at`` before it closes the database.
    """
    runtime = keyguard if keyguard is not None else Keyguard(settings or load_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(runtime.start)
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="keyguard",
        version=__version__,
        summary="API keys with scopes and IP allow-lists, wire-compatible with Wavix.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.keyguard = runtime
    install_error_handlers(app)
    app.include_router(key_router(runtime.service))

    @app.get(
        "/healthz",
        tags=["Operations"],
        summary="Liveness and database reachability",
        responses={503: {"model": ErrorResponse}},
    )
    async def healthz(request: Request) -> JSONResponse:
        await run_in_threadpool(request.app.state.keyguard.store.ping)
        return JSONResponse({"success": True, "keys": len(runtime.cache)})

    verify_token = runtime.settings.verify_token
    app.include_router(
        verify_router(runtime.decider, verify_token.get_secret_value() if verify_token else None)
    )
    _document(app, runtime)
    app.add_middleware(
        KeyguardMiddleware,
        decider=runtime.decider,
        trusted_proxies=runtime.trusted_proxies,
        protect=_protected,
    )
    return Dispatcher(ForwardAuth(runtime.decider, runtime.trusted_proxies), LastResort(app))


class Dispatcher:
    """Send forward-auth requests straight to :class:`ForwardAuth`, the rest to the app.

    Forward auth is the hot path: it skips the framework's middleware stack and
    router entirely.
    """

    def __init__(self, forward: ForwardAuth, app: ASGIApp) -> None:
        self.forward = forward
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_forward_auth(scope["path"]):
            await self.forward(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _document(app: FastAPI, runtime: Keyguard) -> None:
    """Complete the OpenAPI document with what the framework cannot see."""
    groups = runtime.service.groups
    bodies = (create_request_model(groups), update_request_model(groups))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                component_schemas(*bodies)
            )
            schema["components"]["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "appid": {"type": "apiKey", "in": "query", "name": "appid"},
            }
            schema["security"] = [{"bearerAuth": []}, {"appid": []}]
            schema["paths"][FORWARD_PATH] = forward_auth_document()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
