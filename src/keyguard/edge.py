"""The raw-ASGI edge: what forward auth and the middleware read from a request, and
how they answer, outside any web framework.

A request's headers are scanned once (:class:`ProxiedRequest`); a :class:`Gate`
turns them into a decision (credential, client address, method and path); a
refusal is sent with its Wavix error body, encoded once per distinct answer.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Scope, Send

from keyguard.decide import Decider, Decision
from keyguard.domain.keys import request_credential
from keyguard.domain.network import ClientIPHeader, Network, client_address

UNAUTHORIZED_BODY: dict[str, Any] = {"success": False, "error": True, "message": "Unauthorized"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """The Wavix body of an error response."""
    if status == 401:
        return UNAUTHORIZED_BODY
    return {"success": False, "message": message}


@dataclass(slots=True)
class ProxiedRequest:
    """What keyguard reads from the headers of a request, in one pass."""

    client_ip_header: ClientIPHeader
    authorizations: list[str] = field(default_factory=list)
    client_ips: list[str] = field(default_factory=list)
    original_method: str | None = None
    original_uri: str | None = None
    conflicting: bool = False  # two original-request headers that disagree

    @classmethod
    def scan(
        cls, headers: Iterable[tuple[bytes, bytes]], client_ip_header: ClientIPHeader
    ) -> "ProxiedRequest":
        """Read ``headers`` once; of the client-address headers, only ``client_ip_header``."""
        found = cls(client_ip_header)
        client_ip_name = _HEADER_NAMES[client_ip_header]
        for name, raw in headers:
            if name == b"authorization":
                found.authorizations.append(raw.decode("latin-1"))
            elif name == client_ip_name:
                found.client_ips.append(raw.decode("latin-1"))
            elif name in _METHOD_HEADERS:
                found.original_method = found._original(found.original_method, raw)
            elif name in _URI_HEADERS:
                found.original_uri = found._original(found.original_uri, raw)
        return found

    def _original(self, seen: str | None, raw: bytes) -> str:
        # A proxy sets one of these; a client may send the other (most proxies pass
        # client headers on to the auth request). Which one comes first depends on
        # the proxy, so two that disagree make the request impossible to judge.
        value = raw.decode("latin-1")
        if seen is not None and seen != value:
            self.conflicting = True
        return seen if seen is not None else value

    def credential(self, query: str) -> str | None:
        """The key: the ``Authorization`` header, or ``appid`` in ``query``."""
        appids = []
        if not self.authorizations and "appid" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            appids = [value for name, value in pairs if name == "appid"]
        return request_credential(self.authorizations, appids)

    def client(self, scope: Scope, trusted_proxies: tuple[Network, ...]) -> str | None:
        """The client's address: the TCP peer's, or what a trusted proxy says it is."""
        peer = scope.get("client")
        return client_address(
            peer[0] if peer else None, self.client_ips, trusted_proxies, self.client_ip_header
        )


_HEADER_NAMES = {header: header.value.encode() for header in ClientIPHeader}
_METHOD_HEADERS = (b"x-original-method", b"x-forwarded-method")
_URI_HEADERS = (b"x-original-uri", b"x-forwarded-uri")


async def send_error(send: Send, status: int, message: str) -> None:
    """Answer with a Wavix error body, outside any framework."""
    await send_decision(send, Decision(False, status, message))


async def send_decision(send: Send, decision: Decision, *, message_header: bool = False) -> None:
    """Answer a refused request with its Wavix error body.

    With ``message_header``, the message also travels in ``X-Keyguard-Message``,
    for proxies such as nginx that answer the client from headers, not the body.
    """
    headers, body = _refusal_response(decision.status, decision.message, decision.retry_after)
    if decision.ratelimit is not None:
        headers = [*headers, *decision.ratelimit.headers(decision.retry_after)]
    if message_header:
        headers = [*headers, (b"x-keyguard-message", decision.message.encode("latin-1", "replace"))]
    await send({"type": "http.response.start", "status": decision.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@lru_cache(maxsize=4096)
def _refusal_response(
    status: int, message: str, retry_after: int | None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a refusal, encoded once: refusals come in floods."""
    body = json.dumps(error_body(status, message), separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return headers, body


@dataclass(frozen=True, slots=True)
class Gate:
    """Decisions for requests as they reach the edge: scan, credential, client, decide."""

    decider: Decider
    trusted_proxies: tuple[Network, ...] = ()
    client_ip_header: ClientIPHeader = ClientIPHeader.X_FORWARDED_FOR

    def scan(self, scope: Scope) -> ProxiedRequest:
        return ProxiedRequest.scan(scope["headers"], self.client_ip_header)

    def decide(
        self, facts: ProxiedRequest, scope: Scope, method: str, path: str, query: str
    ) -> tuple[Decision, str | None]:
        """The decision for ``method`` ``path``, and the client address it judged.

        It never waits: a key a bounded snapshot must read first answers
        :data:`~keyguard.decide.UNCACHED`, for :meth:`decide_after_read`."""
        client = facts.client(scope, self.trusted_proxies)
        token = facts.credential(query)
        return self.decider.decide(token, client, method, path, fetch=False), client

    async def decide_after_read(
        self, facts: ProxiedRequest, scope: Scope, method: str, path: str, query: str
    ) -> tuple[Decision, str | None]:
        """:meth:`decide`, once the key is read from the store in a worker thread."""
        client = facts.client(scope, self.trusted_proxies)
        token = facts.credential(query)
        return await self.decider.decide_after_read(token, client, method, path), client
