"""ASGI middleware that puts keyguard in front of any Starlette or FastAPI app.

Every HTTP request it protects is decided by :meth:`keyguard.decide.Decider.decide`.
A refusal is answered at once with the Wavix error body; an allowed request
reaches the app with the decision in ``request.state.keyguard``::

    app.add_middleware(KeyguardMiddleware, decider=keyguard.decider)

    @app.get("/v1/messages")
    async def messages(request: Request) -> dict[str, int]:
        return {"account": request.state.keyguard.account_id}
"""

from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from keyguard.decide import UNCACHED, Decider
from keyguard.domain.network import ClientIPHeader, Network
from keyguard.edge import Gate, send_decision


def _everything(_path: str) -> bool:
    return True


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
        self.gate = Gate(decider, tuple(trusted_proxies), ClientIPHeader(client_ip_header))
        self.protect = protect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protect(scope["path"]):
            await self.app(scope, receive, send)
            return
        # The raw path, as sent: what the app's router will decode once.
        raw_path: Any = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        gate = self.gate
        facts = gate.scan(scope)
        decision, ip = gate.decide(facts, scope, scope["method"], path, query)
        if decision is UNCACHED:
            decision, ip = await gate.decide_after_read(facts, scope, scope["method"], path, query)
        if not decision.allowed:
            await send_decision(send, decision)
            return
        state = scope.setdefault("state", {})
        state["keyguard"] = decision
        state["keyguard_client"] = ip
        await self.app(scope, receive, send)
