"""``POST /auth/verify``: the decision as JSON, for backends that ask keyguard directly.

The same question as ``/auth/forward`` (:mod:`keyguard.forward`), asked with a body.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr, ValidationError

from keyguard.api.requests import peer_address, read_json
from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse, request_body
from keyguard.api.tokens import token_holder
from keyguard.decide import UNCACHED, Decider, Decision
from keyguard.errors import InvalidInput
from keyguard.limits import WindowLimiter


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
    decider: Decider, token: SecretStr | None, failures: WindowLimiter | None, max_body_bytes: int
) -> APIRouter:
    """``POST /auth/verify``; when ``token`` is set, callers must present it.

    A wrong token is a failed authentication of the caller, counted in ``failures``
    against the TCP peer: the backend that asks, not the client it asks about.
    """
    router = APIRouter(tags=["Authorization"])
    caller_address: Callable[[Request], Awaitable[str | None]] = (
        _peer if token is None else token_holder(token, peer_address, failures)
    )

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
    async def verify(
        request: Request, caller: Annotated[str | None, Depends(caller_address)]
    ) -> JSONResponse:
        body = await read_json(request, max_body_bytes, required=True)  # after the caller
        try:
            asked = VerifyRequest.model_validate(body)
        except ValidationError as error:
            location = error.errors()[0].get("loc", ())
            raise InvalidInput.parameter(str(location[0]) if location else "body") from None
        # Failed authentications are charged to the address the caller reports only
        # when the caller proved it is the configured backend; an anonymous caller is
        # charged itself, so that it cannot lock other clients out.
        failures_of = asked.ip if token is not None else caller
        decision = decider.decide(
            asked.key, asked.ip, asked.method, asked.path, failures_of=failures_of, fetch=False
        )
        if decision is UNCACHED:  # a bounded snapshot's key: read it without blocking
            decision = await decider.decide_after_read(
                asked.key, asked.ip, asked.method, asked.path, failures_of
            )
        return JSONResponse(
            {
                "allowed": decision.allowed,
                "status": decision.status,
                "message": decision.message,
                "account_id": decision.account_id,
                "key_id": decision.key_id,
                "scope": decision.scope,
                "retry_after": decision.retry_after,
            },
            headers=None if decision.ratelimit is None else _headers(decision),
        )

    return router


async def _peer(request: Request) -> str | None:
    """Without a token anyone may ask; its own address is charged for the keys it guesses."""
    return peer_address(request)


def _headers(decision: Decision) -> dict[str, str]:
    """A rate-limited key's ``RateLimit-Policy`` and ``RateLimit``, as forward auth sends them."""
    assert decision.ratelimit is not None
    fields = decision.ratelimit.headers(decision.retry_after)
    return {name.decode(): value.decode() for name, value in fields}
