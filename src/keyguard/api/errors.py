"""Every error keyguard's HTTP API sends has a Wavix body.

Handlers here translate keyguard's exceptions and the framework's own 404, 405
and validation errors; :class:`LastResort` makes sure that even a bug answers
with a Wavix 500 and is logged without its message (which might quote input).
"""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyguard.edge import error_body
from keyguard.errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    StorageUnavailable,
    Unauthorized,
)
from keyguard.logs import loggable_path

log = logging.getLogger("keyguard.api")

HTTP_MESSAGES = {
    404: "Route not found",
    405: "Method not allowed",
    413: "Request body too large",
    431: "Request headers too large",
    500: "Internal server error",
    503: "Service temporarily unavailable",
}


def wavix_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


async def _invalid_input(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidInput)
    return wavix_error(error.status, error.message)


async def _not_found(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, NotFound)
    return wavix_error(404, error.message)


async def _unauthorized(_request: Request, _error: Exception) -> JSONResponse:
    return wavix_error(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})


async def _rate_limited(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RateLimited)
    return wavix_error(429, error.message, {"Retry-After": str(error.retry_after)})


async def _unavailable(_request: Request, _error: Exception) -> JSONResponse:
    return wavix_error(503, HTTP_MESSAGES[503], {"Retry-After": "1"})


async def _http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    message = HTTP_MESSAGES.get(error.status_code, "Request failed")
    headers = dict(error.headers or {})
    if error.status_code == 405:
        # Each method of a path is its own route; Allow must name them all.
        headers["Allow"] = ", ".join(_methods_for(request))
    return wavix_error(error.status_code, message, headers)


def _methods_for(request: Request) -> list[str]:
    """The methods of every route whose template matches the path: documented
    routes, undocumented ones (``/docs``), and ``HEAD`` wherever ``GET`` is
    (see :class:`keyguard.api.app.HeadAsGet`)."""
    path = request.url.path
    methods: set[str] = set()
    for template, item in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            methods.update(method.upper() for method in item)
    for route in request.app.routes:
        if (
            isinstance(route, Route)
            and not route.include_in_schema
            and route.path_regex.match(path)
        ):
            methods.update(route.methods or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _validation(_request: Request, error: Exception) -> JSONResponse:
    """Framework validation: a bad ``{id}`` is an unknown record; anything else a
    400 naming the parameter (``body`` when the body itself is unreadable)."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0]
    location = first.get("loc", ())
    if location and location[0] == "path":
        return wavix_error(404, "Record not found")
    name = location[1] if len(location) > 1 and isinstance(location[1], str) else "body"
    if first.get("type") == "json_invalid" or location[:1] == ("header",):
        name = "body" if location[:1] == ("body",) else name
    return wavix_error(400, f"Missing or invalid parameter {name}")


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    path = loggable_path(request.url.path)
    log.error("unexpected %s on %s %s", type(error).__name__, request.method, path)
    return wavix_error(500, HTTP_MESSAGES[500])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(StorageUnavailable, _unavailable)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)


class LastResort:
    """Outermost middleware: swallow the re-raise of an error already answered.

    Starlette sends the 500 from the ``Exception`` handler and then re-raises so
    that servers can log a traceback; keyguard has logged the error already, by
    type only, and a traceback could quote a secret.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if scope["type"] != "http":
                raise
            if not started:
                log.error("unexpected %s outside the app", type(error).__name__)
                response: Any = wavix_error(500, HTTP_MESSAGES[500])
                await response(scope, receive, send)
