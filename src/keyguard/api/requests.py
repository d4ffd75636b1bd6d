"""What the API's handlers read from a request: who calls, from which address, and
the JSON body.

Routers get these from their factories, as FastAPI dependencies or as functions
given the limits they need, never from the application's state.
"""

import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from keyguard.decide import Decision
from keyguard.domain.network import ClientIPHeader, Network
from keyguard.domain.records import Actor
from keyguard.edge import ProxiedRequest
from keyguard.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Caller:
    """The account behind a request and the actor its changes are recorded under."""

    account_id: int
    actor: Actor


async def key_caller(request: Request) -> Caller:
    """The key that :class:`~keyguard.middleware.KeyguardMiddleware` allowed to make the request."""
    decision: Decision = request.state.keyguard
    assert decision.account_id is not None
    actor = Actor("key", decision.key_id, request.state.keyguard_client)
    return Caller(decision.account_id, actor)


KeyCaller = Annotated[Caller, Depends(key_caller)]


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """A request's client address: the TCP peer's, or what a trusted proxy says it is."""

    trusted_proxies: tuple[Network, ...] = ()
    header: ClientIPHeader = ClientIPHeader.X_FORWARDED_FOR

    def __call__(self, request: Request) -> str | None:
        scope = request.scope
        facts = ProxiedRequest.scan(scope["headers"], self.header)
        return facts.client(scope, self.trusted_proxies)


def peer_address(request: Request) -> str | None:
    """The TCP peer's address, whatever the request's headers say."""
    return request.client.host if request.client else None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw request body. One over ``max_bytes`` is refused with 413, before it is
    read when its ``Content-Length`` says so, else as soon as it grows past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput("Request body too large", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInput("Request body too large", 413)
    return bytes(body)


async def read_json(request: Request, max_bytes: int, *, required: bool) -> object:
    """The request body as JSON (see :func:`read_body`); an absent body is ``{}``
    unless ``required``."""
    body = await read_body(request, max_bytes)
    if not body.strip():
        if required:
            raise InvalidInput.parameter("body")
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput.parameter("body") from None
