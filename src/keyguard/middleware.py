"""ASGI middleware that puts keyguard in front of any Starlette or FastAPI app.

Every HTTP request it protects is decided by :meth:`keyguard.decide.Decider.decide`.
A refusal is answered at once with the Wavix error body; an allowed request
reaches the app with the decision in ``request.state.keyguard``::

    app.add_middleware(KeyguardMiddleware, decider=keyguard.decider)

    @app.get("/v1/messages")
    async def messages(request: Request) -> dict[str, int]:
        return {"account": request.state.keyguard.account_id}
"""

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from keyguard.decide import Decider, Decision
from keyguard.domain.keys import request_credential
from keyguard.domain.network import ClientIPHeader, Network, client_address
from keyguard.wire import error_body


def _everything(_path: str) -> bool:
    return True


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
    headers, body = _refusal(decision.status, decision.message, decision.retry_after)
    if message_header:
        headers = [*headers, (b"x-keyguard-message", decision.message.encode("latin-1", "replace"))]
    await send({"type": "http.response.start", "status": decision.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@lru_cache(maxsize=4096)
def _refusal(
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


class KeyguardMiddleware:
    """Decide every protected request before ``app`` sees it."""

    def __init__(
        self,
        app: ASGIApp,
        decider: Decider,
        *,
        trusted_proxies: Sequence[Network] = (),
        client_ip_header: ClientIPHeader | str = ClientIPHeader.X_FORWARDED_FOR,
        protect: Callable[[str], bool] = _everything,
    ) -> None:
        self.app = app
        self.decider = decider
        self.trusted_proxies = tuple(trusted_proxies)
        self.client_ip_header = ClientIPHeader(client_ip_header)
        self.protect = protect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protect(scope["path"]):
            await self.app(scope, receive, send)
            return
        facts = ProxiedRequest.scan(scope["headers"], self.client_ip_header)
        token = facts.credential(scope.get("query_string", b"").decode("latin-1"))
        ip = facts.client(scope, self.trusted_proxies)
        raw_path: Any = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        decision = self.decider.decide(token, ip, scope["method"], path)
        if not decision.allowed:
            await send_decision(send, decision)
            return
        state = scope.setdefault("state", {})
        state["keyguard"] = decision
        state["keyguard_client"] = ip
        await self.app(scope, receive, send)
