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
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from keyguard.decide import Decider, Decision
from keyguard.domain.keys import request_credential
from keyguard.domain.network import Network, client_address
from keyguard.wire import error_body


def _everything(_path: str) -> bool:
    return True


def request_facts(
    scope: Scope, trusted_proxies: Sequence[Network]
) -> tuple[str | None, str | None]:
    """The credential and the client address of an ASGI HTTP request."""
    authorizations: list[str] = []
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorizations.append(value.decode("latin-1"))
        elif name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    query: bytes = scope.get("query_string", b"")
    appids = []
    if b"appid" in query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        appids = [value for name, value in pairs if name == "appid"]
    client = scope.get("client")
    peer = client[0] if client else None
    ip = client_address(peer, ",".join(forwarded) or None, trusted_proxies)
    return request_credential(authorizations, appids), ip


async def send_decision(send: Send, decision: Decision) -> None:
    """Answer a refused request with its Wavix error body."""
    body = json.dumps(error_body(decision.status, decision.message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if decision.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": decision.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class KeyguardMiddleware:
    """Decide every protected request before ``app`` sees it."""

    def __init__(
        self,
        app: ASGIApp,
        decider: Decider,
        *,
        trusted_proxies: Sequence[Network] = (),
        protect: Callable[[str], bool] = _everything,
    ) -> None:
        self.app = app
        self.decider = decider
        self.trusted_proxies = tuple(trusted_proxies)
        self.protect = protect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protect(scope["path"]):
            await self.app(scope, receive, send)
            return
        token, ip = request_facts(scope, self.trusted_proxies)
        raw_path: Any = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        decision = self.decider.decide(token, ip, scope["method"], path)
        if not decision.allowed:
            await send_decision(send, decision)
            return
        scope.setdefault("state", {})["keyguard"] = decision
        await self.app(scope, receive, send)
