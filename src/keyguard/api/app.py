"""The application factory."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyguard import __version__
from keyguard.api.admin import admin_router
from keyguard.api.audit import audit_router
from keyguard.api.errors import (
    HTTP_MESSAGES,
    LastResort,
    install_error_handlers,
    wavix_error,
)
from keyguard.api.keys import key_router
from keyguard.api.requests import ClientAddress
from keyguard.api.scanning import SCANNING_PATH, scanning_router
from keyguard.api.schemas import (
    ERROR_RESPONSES,
    SECURITY_SCHEMES,
    AccountCreateRequest,
    ErrorResponse,
    HealthResponse,
    RollRequest,
    component_schemas,
    create_request_model,
    forward_auth_document,
    route_entries,
    update_request_model,
)
from keyguard.api.tokens import token_holder
from keyguard.api.usage import usage_router
from keyguard.api.verify import VerifyRequest, verify_router
from keyguard.config import Settings, load_settings
from keyguard.domain.routes import UnknownRoutes
from keyguard.edge import send_error
from keyguard.forward import FORWARD_PATH, ForwardAuth, is_forward_auth
from keyguard.middleware import KeyguardMiddleware
from keyguard.runtime import Keyguard


def _key_protected(signed: frozenset[str]) -> Callable[[str], bool]:
    """Which paths the key middleware decides: ``/v1/``, but for ``signed`` paths, whose
    callers prove who they are by a signature."""

    def protected(path: str) -> bool:
        return path.startswith("/v1/") and path not in signed

    return protected


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
        docs_url=None,
        redoc_url=None,
    )
    settings = runtime.settings
    client_address = ClientAddress(runtime.trusted_proxies, runtime.client_ip_header)
    install_error_handlers(app)
    app.include_router(
        key_router(runtime.service, runtime.management_writes, settings.max_body_bytes)
    )
    app.include_router(audit_router(runtime.service))
    app.include_router(usage_router(runtime.service))
    if settings.admin_token is not None:
        app.include_router(
            admin_router(
                runtime.service,
                settings.admin_token,
                client_address,
                runtime.auth_failures,
                settings.max_body_bytes,
            )
        )
    _console(app, runtime)
    signed: frozenset[str] = frozenset()
    if runtime.scanning_keys is not None:
        signed = frozenset({SCANNING_PATH})
        router = scanning_router(
            runtime.service,
            runtime.scanning_keys,
            trusted_proxies=runtime.trusted_proxies,
            client_ip_header=runtime.client_ip_header,
            failures=runtime.auth_failures,
        )
        app.include_router(router)

    @app.get(
        "/healthz",
        tags=["Operations"],
        summary="Whether this process can decide requests, and whether its database answers",
        description="200 while this process can decide from its key snapshot, with whether "
        "the database answers and the snapshot's age; 503 before the snapshot is loaded. "
        "Anyone may ask, so it tells no counts.",
        responses={200: {"model": HealthResponse}, 503: {"model": ErrorResponse}},
    )
    async def healthz() -> JSONResponse:
        # Read from the snapshot's own refreshes (every 0.25 s): a health check
        # costs no query, and a database outage does not fail it while the
        # snapshot can still decide. Anyone may ask, so it tells no counts.
        cache = runtime.cache
        if cache.age is None:
            return wavix_error(503, "Key snapshot not loaded")
        body: dict[str, object] = {
            "success": True,
            "database": _reachable(cache.store_reachable),
            "snapshot_age_seconds": round(cache.age, 3),
        }
        replica = runtime.replica
        if replica is not None:  # the snapshot reads the replica; the primary takes samples
            body["database"] = _reachable(replica.primary_reachable)
            body["replica"] = _reachable(cache.store_reachable)
            body["replica_lag_seconds"] = round(replica.seconds, 3)
        return JSONResponse(body)

    metrics_token = settings.metrics_token
    scrapers = (
        []
        if metrics_token is None  # the counts cover every account: only its holder sees them
        else [Depends(token_holder(metrics_token, client_address, runtime.auth_failures))]
    )

    @app.get(
        "/metrics",
        tags=["Operations"],
        summary="Prometheus metrics of the whole server",
        description="Decisions, snapshot and database figures in the Prometheus text format. "
        "One scrape covers every worker of `keyguard serve --workers N`: counters and "
        "histograms are totals, gauges are per worker (label `pid`). "
        "`X-Keyguard-Worker` names the worker that answered. With KEYGUARD_METRICS_TOKEN "
        "set, only callers presenting it as a bearer token may read them.",
        response_class=PlainTextResponse,
        responses={
            200: {
                "headers": {
                    "X-Keyguard-Worker": {
                        "schema": {"type": "string"},
                        "description": "The pid of the worker that answered.",
                    }
                }
            },
            401: {**ERROR_RESPONSES[401], "description": "KEYGUARD_METRICS_TOKEN not presented."},
            429: ERROR_RESPONSES[429],
        },
        dependencies=scrapers,
    )
    async def metrics() -> Response:
        exposition = await run_in_threadpool(runtime.metrics.render)  # reads files when shared
        worker = {"X-Keyguard-Worker": str(runtime.metrics.pid)}
        return Response(exposition, media_type=CONTENT_TYPE_LATEST, headers=worker)

    app.include_router(
        verify_router(
            runtime.decider, settings.verify_token, runtime.auth_failures, settings.max_body_bytes
        )
    )
    _document(app, runtime)
    _documentation_page(app)
    app.add_middleware(
        KeyguardMiddleware,
        decider=runtime.decider,
        trusted_proxies=runtime.trusted_proxies,
        client_ip_header=runtime.client_ip_header,
        protect=_key_protected(signed),
    )
    forward = ForwardAuth(runtime.decider, runtime.trusted_proxies, runtime.client_ip_header)
    return Dispatcher(forward, LastResort(HeadAsGet(app)), settings.max_header_bytes)


def _reachable(reached: bool) -> str:
    return "ok" if reached else "unreachable"


def _console(app: FastAPI, runtime: Keyguard) -> None:
    """The web console at /console/, and the operator's sign-in links when enabled."""
    # Imported here: the console's pages use the API's schemas and token checks, so a
    # module-level import would make `import keyguard.console` circular.
    from keyguard.console import (
        Console,
        console_link_router,
        console_router,
        open_sessions,
    )

    console = Console(
        runtime.service,
        runtime.decider,
        runtime.cache,
        open_sessions(runtime.store),
        runtime.trusted_proxies,
        runtime.client_ip_header,
        runtime.management_writes,
    )
    app.include_router(console_router(console))
    admin_token = runtime.settings.admin_token
    if admin_token is not None:
        app.include_router(console_link_router(console, admin_token, runtime.auth_failures))


class Dispatcher:
    """Send forward-auth requests straight to :class:`ForwardAuth`, the rest to the app.

    Forward auth is the hot path: it skips the framework's middleware stack and
    router entirely. Oversized headers are refused here, before anything reads them.
    """

    def __init__(self, forward: ForwardAuth, app: ASGIApp, max_header_bytes: int) -> None:
        self.forward = forward
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif _header_bytes(scope["headers"]) > self.max_header_bytes:
            await send_error(send, 431, HTTP_MESSAGES[431])
        elif is_forward_auth(scope["path"]):
            await self.forward(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class HeadAsGet:
    """Answer ``HEAD`` as ``GET``, with the headers of the ``GET`` answer and no body.

    Every route that answers ``GET`` answers ``HEAD`` too (RFC 9110 §9.3.2); the
    framework's routes declare only ``GET``. The app sees a copy of the scope: the
    server keeps its own, and with it knows to send no body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    total = 0
    for name, value in headers:  # a plain loop: twice as fast as sum() over a generator
        total += len(name) + len(value)
    return total


# Swagger UI's distribution files, as the fastapi-offline package ships them.
DOCS_ASSETS = "/docs/assets"
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def _documentation_page(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its assets served by keyguard itself.

    FastAPI's own page loads them from a CDN, and shows a blank page on a machine
    without internet access.
    """
    folder = Path(str(files("fastapi_offline").joinpath("static")))

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in _ASSET_TYPES:
            raise HTTPException(404)
        return FileResponse(folder / name, media_type=_ASSET_TYPES[name])


def _document(app: FastAPI, runtime: Keyguard) -> None:
    """Complete the OpenAPI document with what the framework cannot see: bodies keyguard
    parses itself, forward auth, who must present what, and the route map it enforces."""
    groups = runtime.service.groups
    bodies = (
        create_request_model(groups),
        update_request_model(groups),
        RollRequest,
        VerifyRequest,
        AccountCreateRequest,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=_description(runtime.routes.unknown),
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                component_schemas(*bodies)
            )
            schema["paths"][FORWARD_PATH] = forward_auth_document()
            _declare_security(schema, runtime.settings)
            schema["x-keyguard-routes"] = route_entries(runtime.routes)
            _drop_framework_validation_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _description(unknown: UnknownRoutes) -> str:
    elsewhere = (
        "is refused for every key"
        if unknown is UnknownRoutes.DENY
        else "may be called by full-access keys only"
    )
    return (
        "Each operation names under `security` what its caller presents; operations "
        "without it are open. `x-keyguard-routes` is the route map keyguard enforces: for "
        "each route its method, its path (`{name}` matches one segment), the scope group a "
        "key with `scopes_enabled` needs, and the level (`read` covers GET and HEAD, "
        "`write` every method). A route with `scope: null` needs a full-access key, and a "
        f"path that matches no route {elsewhere}."
    )


KEY_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"appid": []}]


def _security(path: str, settings: Settings) -> list[dict[str, list[str]]] | None:
    """What a caller of ``path`` presents, or None where nothing is asked."""
    if path.startswith("/admin/"):
        return [{"operatorToken": []}]
    if path == "/metrics":
        return None if settings.metrics_token is None else [{"metricsToken": []}]
    if path == "/auth/verify":
        return None if settings.verify_token is None else [{"verifyToken": []}]
    if path == SCANNING_PATH:
        return [{"githubSignature": []}]
    if path.startswith("/v1/") or path == FORWARD_PATH:  # forward auth: the judged key
        return KEY_SECURITY
    return None


def _declare_security(schema: dict[str, Any], settings: Settings) -> None:
    """Security on each operation that asks for some, and only the schemes in use."""
    used: set[str] = set()
    for path, item in schema["paths"].items():
        security = _security(path, settings)
        if security is None:
            continue
        for operation in item.values():
            operation["security"] = security
        used.update(name for requirement in security for name in requirement)
    schema["components"]["securitySchemes"] = {
        name: scheme for name, scheme in SECURITY_SCHEMES.items() if name in used
    }


def _drop_framework_validation_errors(schema: dict[str, Any]) -> None:
    """keyguard never sends the framework's ``{"detail": …}`` 422: a bad path
    parameter is a 404 and a bad query parameter a 400, both with Wavix bodies."""
    framework = "#/components/schemas/HTTPValidationError"
    for item in schema["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {})
            unprocessable = responses.get("422", {})
            content = unprocessable.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == framework:
                del responses["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
