"""``/auth/forward``: the authorization point for reverse proxies.

A plain ASGI callable, reached before the framework's router: it is the hot
path, and it pays only for reading headers, one decision and one response. It
serves nginx ``auth_request`` (``X-Original-Method``, ``X-Original-URI``),
Traefik and Caddy forward auth (``X-Forwarded-Method``, ``X-Forwarded-Uri``) and
Envoy's HTTP ext_authz (the original method, and the original path appended to
``/auth/forward``).
"""

import logging

from starlette.types import Receive, Scope, Send

from keyguard.decide import UNCACHED, Decider, Decision
from keyguard.domain.network import ClientIPHeader, Network
from keyguard.edge import Gate, send_decision

log = logging.getLogger("keyguard.api")

FORWARD_PATH = "/auth/forward"
_ERROR_BODY = b'{"success":false,"message":"Internal server error"}'
_ERROR_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_ERROR_BODY)).encode()),
]


_IDENTITY_LIMIT = 65_536
CONFLICTING_HEADERS = Decision(
    False, 403, "Conflicting original-request headers: the request cannot be judged"
)


def is_forward_auth(path: str) -> bool:
    return path == FORWARD_PATH or path.startswith(FORWARD_PATH + "/")


class ForwardAuth:
    """Answer 200 with the caller's identity (and ``RateLimit`` headers for a key
    with a rate limit), or 401/403/429 with a Wavix body."""

    def __init__(
        self,
        decider: Decider,
        trusted_proxies: tuple[Network, ...],
        client_ip_header: ClientIPHeader,
    ) -> None:
        self.gate = Gate(decider, trusted_proxies, client_ip_header)
        # The identity headers of recent answers, built once per (account, key, scope).
        self._identities: dict[tuple[object, ...], list[tuple[bytes, bytes]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        try:
            facts = self.gate.scan(scope)
            method = facts.original_method or scope["method"]
            # The raw path, as sent: a decoded one could hide an encoded "?" or "#"
            # that turns the rest of the path into a query the upstream never sees.
            raw = scope.get("raw_path") or scope["path"].encode("latin-1")
            rest = raw.decode("latin-1")[len(FORWARD_PATH) :]
            uri = facts.original_uri
            if uri is None:  # Envoy: the original path follows /auth/forward
                query = scope.get("query_string", b"").decode("latin-1")
                uri = (rest or "/") + (f"?{query}" if query else "")
            if facts.conflicting or (rest and facts.original_uri is not None):
                decision = CONFLICTING_HEADERS
            else:
                path, _, query = uri.partition("?")
                decision, _ = self.gate.decide(facts, scope, method, path, query)
                if decision is UNCACHED:
                    decision, _ = await self.gate.decide_after_read(
                        facts, scope, method, path, query
                    )
        except Exception as error:  # a bug must still answer, and must not log input
            log.error("unexpected %s in forward auth", type(error).__name__)
            await send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
            await send({"type": "http.response.body", "body": _ERROR_BODY})
            return
        if not decision.allowed:
            await send_decision(send, decision, message_header=True)
            return
        headers = self._identity(decision)
        if decision.ratelimit is not None:  # what remains, for the proxy to pass on
            headers = headers + decision.ratelimit.headers()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _identity(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        who = (decision.account_id, decision.key_id, decision.scope)
        headers = self._identities.get(who)
        if headers is None:
            headers = [
                (b"x-keyguard-account-id", str(decision.account_id).encode()),
                (b"x-keyguard-key-id", str(decision.key_id).encode()),
                (b"x-keyguard-scope", str(decision.scope).encode()),
                (b"content-length", b"0"),
            ]
            if len(self._identities) >= _IDENTITY_LIMIT:
                self._identities.clear()
            self._identities[who] = headers
        return headers
