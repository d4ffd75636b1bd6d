"""The authorization point for other APIs: forward auth and the verify API.

``/auth/forward`` is a plain ASGI callable, reached before the framework's
router: it is the hot path, and it pays only for reading headers, one decision
and one response. It serves nginx ``auth_request`` (``X-Original-Method``,
``X-Original-URI``), Traefik ForwardAuth (``X-Forwarded-Method``,
``X-Forwarded-Uri``) and Envoy's HTTP ext_authz (the original method, and the
original path appended to ``/auth/forward``).

``POST /auth/verify`` answers the same question as JSON, for backends that ask
keyguard directly.
"""

import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr, ValidationError
from starlette.types import Receive, Scope, Send

from keyguard.api.keys import read_json
from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse, request_body
from keyguard.api.tokens import authenticate
from keyguard.decide import Decider, Decision
from keyguard.domain.network import ClientIPHeader, Network
from keyguard.errors import InvalidInput
from keyguard.limits import WindowLimiter
from keyguard.middleware import ProxiedRequest, send_decision

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
    """Answer 200 with the caller's identity, or 401/403 with a Wavix body."""

    def __init__(
        self,
        decider: Decider,
        trusted_proxies: tuple[Network, ...],
        client_ip_header: ClientIPHeader,
    ) -> None:
        self.decider = decider
        self.trusted_proxies = trusted_proxies
        self.client_ip_header = client_ip_header
        # The identity headers of recent answers, built once per (account, key, scope).
        self._identities: dict[tuple[object, ...], list[tuple[bytes, bytes]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        try:
            facts = ProxiedRequest.scan(scope["headers"], self.client_ip_header)
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
                client = facts.client(scope, self.trusted_proxies)
                decision = self.decider.decide(facts.credential(query), client, method, path)
        except Exception as error:  # a bug must still answer, and must not log input
            log.error("unexpected %s in forward auth", type(error).__name__)
            await send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
            await send({"type": "http.response.body", "body": _ERROR_BODY})
            return
        if not decision.allowed:
            await send_decision(send, decision, message_header=True)
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": self._identity(decision)}
        )
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


class VerifyRequest(BaseModel):
    """A request to judge, as the backend that received it saw it."""

    key: str | None = Field(default=None, max_length=1024, description="The presented key.")
    ip: str | None = Field(default=None, max_length=64, description="The client address.")
    method: str = Field(min_length=1, max_length=16, examples=["POST"])
    path: str = Field(min_length=1, max_length=8192, examples=["/v3/messages"])


class VerifyResponse(BaseModel):
    allowed: bool
    status: Literal[200, 401, 403, 429]
    message: str
    account_id: int | None
    key_id: int | None
    scope: str | None = Field(description='What the request needed: "messages:write", "full".')
    retry_after: int | None = Field(description="For 429: seconds until the client may retry.")


def verify_router(
    decider: Decider, token: SecretStr | None, failures: WindowLimiter | None
) -> APIRouter:
    """``POST /auth/verify``; when ``token`` is set, callers must present it.

    A wrong token is a failed authentication of the caller, counted in ``failures``.
    """
    router = APIRouter(tags=["Authorization"])

    @router.post(
        "/auth/verify",
        operation_id="auth_verify",
        summary="Decide whether a key may make a request",
        description="Judges a request as `/auth/forward` does, from the key, client "
        "address, method and path in the body. The decision is the body of a 200, "
        "whatever it is; the request itself is refused only when it is malformed, too "
        "large, or, with KEYGUARD_VERIFY_TOKEN set, without that token as a bearer token.",
        response_model=VerifyResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Invalid body."},
            401: ERROR_RESPONSES[401],
            413: {"model": ErrorResponse, "description": "The body is too large."},
            429: ERROR_RESPONSES[429],
        },
        openapi_extra=request_body(VerifyRequest, required=True),
    )
    async def verify(request: Request) -> JSONResponse:
        caller = request.client.host if request.client else None
        if token is not None:  # the caller first, then its body
            authenticate(request.scope["headers"], token, caller, failures)
        body = await read_json(request, required=True)
        try:
            asked = VerifyRequest.model_validate(body)
        except ValidationError as error:
            location = error.errors()[0].get("loc", ())
            raise InvalidInput.parameter(str(location[0]) if location else "body") from None
        # Failed authentications are charged to the address the caller reports only
        # when the caller proved it is the configured backend; an anonymous caller is
        # charged itself, so that it cannot lock other clients out.
        charge = asked.ip if token is not None else caller
        decision = decider.decide(asked.key, asked.ip, asked.method, asked.path, charge=charge)
        return JSONResponse(
            {
                "allowed": decision.allowed,
                "status": decision.status,
                "message": decision.message,
                "account_id": decision.account_id,
                "key_id": decision.key_id,
                "scope": decision.scope,
                "retry_after": decision.retry_after,
            }
        )

    return router
