"""``POST /v1/secret-scanning/github``: GitHub reports keyguard keys it found in public.

GitHub's secret scanning partner protocol (:mod:`keyguard.domain.scanning`). The
caller is authenticated by GitHub's signature over the body, not by an API key:
the key middleware leaves this one path alone while the endpoint is on, and an
API key sent with a report counts for nothing. A bad or missing signature is a
failed authentication of the caller, under the same limit as a wrong key.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from keyguard.api.requests import read_body
from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse
from keyguard.api.tokens import admit
from keyguard.domain.network import ClientIPHeader, Network
from keyguard.domain.records import Actor
from keyguard.domain.scanning import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    Label,
    feedback,
    parse_report,
)
from keyguard.edge import ProxiedRequest
from keyguard.limits import WindowLimiter
from keyguard.scanning_keys import ScanningKeys
from keyguard.service import KeyService

SCANNING_PATH = "/v1/secret-scanning/github"
# GitHub may report many matches at once: more than KEYGUARD_MAX_BODY_BYTES allows
# other requests, and the whole body must be read before its signature can be checked.
MAX_REPORT_BYTES = 1024 * 1024


class Feedback(BaseModel):
    """GitHub's feedback format: was the token a real credential?"""

    token_raw: str
    token_type: str
    label: Label


_MATCH = {
    "type": "object",
    "required": ["token", "type"],
    "properties": {
        "token": {"type": "string", "description": "The string that matched the pattern."},
        "type": {"type": "string", "description": "The name of the pattern it matched."},
        "url": {"type": "string", "description": "Where it was found (may be empty)."},
        "source": {"type": "string", "description": "What held it: content, commit, …"},
    },
}
_REPORT = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "array", "items": _MATCH}}},
    },
    "parameters": [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
        for name in ("Github-Public-Key-Identifier", "Github-Public-Key-Signature")
    ],
}


def scanning_router(
    service: KeyService,
    keys: ScanningKeys,
    *,
    trusted_proxies: tuple[Network, ...],
    client_ip_header: ClientIPHeader,
    failures: WindowLimiter | None,
) -> APIRouter:
    """The endpoint, verifying reports against GitHub's ``keys``."""
    router = APIRouter(tags=["Secret scanning"])

    @router.post(
        SCANNING_PATH,
        operation_id="secret_scanning_github",
        summary="Revoke keys that GitHub's secret scanning found in public",
        description="GitHub's secret scanning partner endpoint, signed by GitHub (ECDSA "
        "P-256, keys from KEYGUARD_GITHUB_SCANNING_KEYS), not called with an API key. "
        "Every live key among the tokens is revoked for good: refused here at once and "
        "by every keyguard process within a second, marked with `leaked_at`, audited as "
        "`key.leak`. The answer labels each token `true_positive` (a key of this "
        "keyguard) or `false_positive`. A report sent again changes nothing.",
        responses={
            200: {"model": list[Feedback]},
            400: {"model": ErrorResponse, "description": "Invalid report."},
            401: {**ERROR_RESPONSES[401], "description": "Missing or invalid signature."},
            413: {"model": ErrorResponse, "description": "The body is too large (1 MiB)."},
            429: ERROR_RESPONSES[429],
        },
        openapi_extra=_REPORT,
    )
    async def report(request: Request) -> JSONResponse:
        facts = ProxiedRequest.scan(request.scope["headers"], client_ip_header)
        client = facts.client(request.scope, trusted_proxies)
        body = await read_body(request, MAX_REPORT_BYTES)
        key_id, signature = _one(request, KEY_ID_HEADER), _one(request, SIGNATURE_HEADER)
        admit(client, failures, lambda: keys.current().verify(body, key_id, signature))
        matches = parse_report(body)
        found = await run_in_threadpool(
            service.report_leaks, matches, Actor("github", None, client)
        )
        answer: list[dict[str, Any]] = [
            feedback(match, real) for match, real in zip(matches, found, strict=True)
        ]
        return JSONResponse(answer)

    return router


def _one(request: Request, name: str) -> str | None:
    """The header's value if the request has it exactly once."""
    values = request.headers.getlist(name)
    return values[0] if len(values) == 1 else None
