"""Pydantic models that document the wire format in ``/openapi.json``.

keyguard parses request bodies itself (to answer with Wavix's exact messages),
so these models describe; they do not validate. They are built per app, because
the scope groups are data.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from keyguard.domain.credits import MAX_CREDITS, NO_CREDITS
from keyguard.domain.fields import (
    CLEAN_TEXT_PATTERN,
    DEFAULT_GRACE_SECONDS,
    EXPIRES_AT_FORMAT,
    FLAG_ALIASES,
    MAX_GRACE_SECONDS,
    MAX_LABEL_LENGTH,
    MAX_PERMITTED_IPS,
    NEVER,
)
from keyguard.domain.ratelimit import MAX_DURATION, MAX_LIMIT, NO_LIMIT
from keyguard.domain.records import Action, ActorKind
from keyguard.domain.routes import RouteMap
from keyguard.domain.scopes import ScopeGroups
from keyguard.service import MAX_ACCOUNT_NAME_LENGTH

LevelName = Literal["none", "read", "write"]


class ScopePermission(BaseModel):
    allow: LevelName


class ScopeGrant(BaseModel):
    """A scope group in a request; ``{}`` or ``{"allow": null}`` mean ``none``."""

    model_config = ConfigDict(extra="forbid")

    allow: LevelName | None = "none"


class SuccessResponse(BaseModel):
    success: Literal[True]


class ErrorResponse(BaseModel):
    """400, 403, 404, 413, 422, 429, 500 and 503 answers."""

    success: Literal[False]
    message: str


class HealthResponse(BaseModel):
    success: Literal[True]
    database: Literal["ok", "unreachable"]
    snapshot_age_seconds: float = Field(description="Since the snapshot last caught up.")
    replica: Literal["ok", "unreachable"] | None = Field(
        default=None,
        description="With KEYGUARD_DATABASE_READ_URL only: whether the snapshot's last "
        "refresh reached the read replica (`database` is then the primary).",
    )
    replica_lag_seconds: float | None = Field(
        default=None,
        description="With KEYGUARD_DATABASE_READ_URL only: since the primary first had a "
        "change the snapshot still lacks (0: none).",
    )


class UnauthorizedResponse(BaseModel):
    success: Literal[False]
    error: Literal[True]
    message: Literal["Unauthorized"]


_FLAG_DOCS = {
    "active": "The key can authenticate.",
    "restricted": "Only permitted_ips may use the key; with an empty list, nobody may.",
    "scopes_enabled": "The key may do only what its scope groups allow; false = full access.",
}


def key_model(groups: ScopeGroups) -> type[BaseModel]:
    """``ApiKey``: every field, both generations of flag names."""
    fields: dict[str, Any] = {
        "id": (int, ...),
        "label": (str, ...),
        "value": (str, Field(description="The secret, or its masked form.")),
    }
    for current, legacy in FLAG_ALIASES.items():
        fields[legacy] = (bool, Field(description=_FLAG_DOCS[current]))
        fields[current] = (bool, Field(description=_FLAG_DOCS[current]))
        if current == "restricted":
            fields["permitted_ips"] = (list[str], ...)
    fields["last_used_at"] = (datetime | None, ...)
    fields.update(dict.fromkeys(groups.names, (ScopePermission, ...)))
    fields["created_at"] = (datetime, ...)
    fields["expires_at"] = (
        datetime | None,
        Field(description="From this second on the key is refused; null: never expires."),
    )
    fields["rolled_from"] = (
        int | None,
        Field(description="The id of the key this one replaced when that key was rolled."),
    )
    fields["leaked_at"] = (
        datetime | None,
        Field(description="When a secret scanner reported the key public; it is refused for good."),
    )
    fields["ratelimit"] = (
        RateLimitModel | None,
        Field(description="At most `limit` requests per `duration` seconds; null: no limit."),
    )
    fields["remaining"] = (
        int | None,
        Field(
            description="Credits left: each allowed request spends one, and at 0 the key is "
            "refused (429) until refilled or raised; null: unlimited. Credits that serving "
            "processes hold in leases are not counted until given back."
        ),
    )
    fields["refill"] = (
        RefillModel | None,
        Field(description="`remaining` becomes `amount` at the start of each UTC day or month."),
    )
    fields["imported"] = (
        Literal["value", "sha256"] | None,
        Field(
            description="How `keyguard import` brought the key in: by its value, or by a "
            'SHA-256 digest, so that `value` is "" and the secret can never be shown; '
            "null: made by keyguard."
        ),
    )
    return create_model("ApiKey", **fields)


class RateLimitModel(BaseModel):
    """A key's rate limit, counted over a sliding window of ``duration`` seconds."""

    model_config = ConfigDict(title="RateLimit", extra="forbid")

    limit: int = Field(ge=1, le=MAX_LIMIT, description="Requests allowed per window.")
    duration: int = Field(ge=1, le=MAX_DURATION, description="The window, in seconds.")


class RefillModel(BaseModel):
    """A refill of a key's credits: ``remaining`` is set to ``amount`` each period."""

    model_config = ConfigDict(title="Refill", extra="forbid")

    amount: int = Field(ge=1, le=MAX_CREDITS, description="Credits at the period's start.")
    interval: Literal["daily", "monthly"] = Field(description="A UTC day or a UTC month.")


class UsagePoint(BaseModel):
    start: datetime = Field(description="The bucket's start, UTC.")
    allowed: int
    unauthorized: int = Field(
        description="401 although the key exists: it was inactive, "
        "expired or leaked, or its account suspended."
    )
    forbidden: int = Field(description="403: the address, the scope or the route.")
    rate_limited: int = Field(description="429: the key's rate limit.")
    no_credits: int = Field(description="429: the key's credits ran out.")


class UsageSeries(BaseModel):
    key_id: int
    granularity: Literal["minute", "hour", "day"]
    from_: datetime = Field(alias="from")
    to: datetime
    items: list[UsagePoint]


class KeyTotals(BaseModel):
    key_id: int
    allowed: int
    unauthorized: int
    forbidden: int
    rate_limited: int
    no_credits: int


class UsageTotals(BaseModel):
    granularity: Literal["minute", "hour", "day"]
    from_: datetime = Field(alias="from", description="The first bucket's start.")
    to: datetime
    items: list[KeyTotals]


class RollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="How long the old key keeps working (never past its own expiry).",
    )


def _request_fields(groups: ScopeGroups) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "permitted_ips": (
            list[str] | None,
            Field(
                default=None,
                max_length=MAX_PERMITTED_IPS,
                description="IPv4/IPv6 addresses or CIDR ranges.",
            ),
        )
    }
    for current, legacy in FLAG_ALIASES.items():
        fields[current] = (bool | None, Field(default=None, description=_FLAG_DOCS[current]))
        fields[legacy] = (
            bool | None,
            Field(default=None, description=f"Older name of `{current}`; `{current}` wins."),
        )
    fields.update(dict.fromkeys(groups.names, (ScopeGrant | None, None)))
    fields["expires_at"] = (
        datetime | Literal["never"] | None,
        Field(
            default=None,
            description=f"When the key stops working ({EXPIRES_AT_FORMAT}); must be in the "
            f'future. "{NEVER}" removes an expiry (null means not given).',
        ),
    )
    fields["ratelimit"] = (
        RateLimitModel | Literal["none"] | None,
        Field(
            default=None,
            description=f'At most `limit` requests per `duration` seconds. "{NO_LIMIT}" removes '
            "a limit (null means not given).",
        ),
    )
    fields["remaining"] = (
        int | Literal["none"] | None,
        Field(
            default=None,
            ge=0,
            le=MAX_CREDITS,
            description="Credits left; sets them anew, dropping what processes hold. "
            f'"{NO_CREDITS}" makes the key unlimited and removes its refill '
            "(null means not given).",
        ),
    )
    fields["refill"] = (
        RefillModel | Literal["none"] | None,
        Field(
            default=None,
            description=f'Set `remaining` to `amount` each UTC day or month. "{NO_CREDITS}" '
            "removes a refill (null means not given).",
        ),
    )
    return fields


def create_request_model(groups: ScopeGroups) -> type[BaseModel]:
    label = (
        str,
        Field(
            min_length=1,
            max_length=MAX_LABEL_LENGTH,
            json_schema_extra={"pattern": CLEAN_TEXT_PATTERN},
        ),
    )
    return create_model("ApiKeyCreateRequest", label=label, **_request_fields(groups))


def update_request_model(groups: ScopeGroups) -> type[BaseModel]:
    label: Any = (
        str | None,
        Field(
            default=None,
            min_length=1,
            max_length=MAX_LABEL_LENGTH,
            json_schema_extra={"pattern": CLEAN_TEXT_PATTERN},
        ),
    )
    return create_model(
        "ApiKeyUpdateRequest",
        __config__=ConfigDict(extra="forbid"),
        label=label,
        **_request_fields(groups),
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": UnauthorizedResponse, "description": "Missing, unknown or inactive key."},
    403: {"model": ErrorResponse, "description": "The key may not make this request."},
    429: {
        "model": ErrorResponse,
        "description": "Too many failed authentications from this address, or too many "
        "changes by this account.",
        "headers": {
            "Retry-After": {
                "schema": {"type": "integer"},
                "required": True,
                "description": "Seconds.",
            }
        },
    },
    431: {"model": ErrorResponse, "description": "The request headers are too large."},
    500: {"model": ErrorResponse, "description": "Unexpected error."},
    503: {"model": ErrorResponse, "description": "The database is unreachable."},
}


def request_body(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """``openapi_extra`` that documents a JSON body by component reference."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}
    }


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas for models referenced only from ``openapi_extra``."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def forward_auth_document() -> dict[str, Any]:
    """The OpenAPI path item of ``/auth/forward``, which bypasses the framework."""
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    unauthorized = {"$ref": "#/components/schemas/UnauthorizedResponse"}
    headers = {
        name: {"in": "header", "name": name, "required": False, "schema": {"type": "string"}}
        for name in ("X-Original-Method", "X-Original-URI", "X-Forwarded-Method",
                     "X-Forwarded-Uri", "X-Real-IP", "X-Forwarded-For")
    }  # fmt: skip
    identity = {
        name: {"schema": {"type": "string"}}
        for name in ("X-Keyguard-Account-Id", "X-Keyguard-Key-Id", "X-Keyguard-Scope")
    }
    operation = {
        "tags": ["Authorization"],
        "summary": "Forward auth for nginx auth_request, Traefik ForwardAuth, Envoy ext_authz",
        "description": "Decides the original request (method and URI from the proxy's "
        "headers, or for Envoy the method of this request and the path after "
        "/auth/forward) and answers 200 with the caller's identity, or 401/403 with a "
        "Wavix body. It answers every method alike, these and any other.",
        "parameters": list(headers.values()),
    }
    responses = {
        "200": {"description": "Allowed.", "headers": identity},
        "401": {"description": "Missing, unknown or inactive key.",
                "content": {"application/json": {"schema": unauthorized}}},
        "403": {"description": "The key may not make this request.",
                "content": {"application/json": {"schema": error}}},
        "429": {"description": "Too many failed authentications from this address.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "required": True,
                                            "description": "Seconds."}},
                "content": {"application/json": {"schema": error}}},
        "431": {"description": "The request headers are too large.",
                "content": {"application/json": {"schema": error}}},
        "500": {"description": "Unexpected error.",
                "content": {"application/json": {"schema": error}}},
    }  # fmt: skip
    # An answer to HEAD has headers only: the server sends no body.
    headers_only = {
        status: {name: part for name, part in answer.items() if name != "content"}
        for status, answer in responses.items()
    }
    return {
        method: {
            **operation,
            "operationId": "auth_forward" + ("" if method == "get" else f"_{method}"),
            "responses": headers_only if method == "head" else responses,
        }
        for method in FORWARD_METHODS
    }


# Every method a path item can name; forward auth answers these and any other alike.
FORWARD_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")


def route_entries(route_map: RouteMap) -> list[dict[str, str | None]]:
    """The ``x-keyguard-routes`` list: which scope group and level each route needs."""
    return [
        {
            "method": route.method,
            "path": route.template,
            "scope": route.scope,
            "level": None if route.scope is None else route.level.label,
        }
        for route in route_map.routes
    ]


SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key, kg_…"},
    "appid": {
        "type": "apiKey",
        "in": "query",
        "name": "appid",
        "description": "An API key, the legacy way; Authorization wins when both are sent.",
    },
    "operatorToken": {"type": "http", "scheme": "bearer", "description": "KEYGUARD_ADMIN_TOKEN"},
    "metricsToken": {"type": "http", "scheme": "bearer", "description": "KEYGUARD_METRICS_TOKEN"},
    "verifyToken": {"type": "http", "scheme": "bearer", "description": "KEYGUARD_VERIFY_TOKEN"},
    "githubSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Github-Public-Key-Signature",
        "description": "GitHub's signature of the body, by the key Github-Public-Key-Identifier "
        "names among KEYGUARD_GITHUB_SCANNING_KEYS.",
    },
}


class Pagination(BaseModel):
    current_page: int
    per_page: int
    total: int
    total_pages: int


class AuditActor(BaseModel):
    type: ActorKind
    key_id: int | None = Field(description="The key that made the change, for type key.")
    ip: str | None


class AuditEntry(BaseModel):
    id: int
    account_id: int
    occurred_at: datetime
    action: Action
    key_id: int | None
    actor: AuditActor
    before: dict[str, Any] | None = Field(description="Settings before; never a secret.")
    after: dict[str, Any] | None = Field(description="Settings after; never a secret.")


class AuditPage(BaseModel):
    items: list[AuditEntry]
    pagination: Pagination


class AccountObject(BaseModel):
    id: int
    name: str
    status: Literal["active", "suspended"]
    created_at: datetime


class AccountsPage(BaseModel):
    items: list[AccountObject]
    pagination: Pagination


class AccountCreateRequest(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=MAX_ACCOUNT_NAME_LENGTH,
        json_schema_extra={"pattern": CLEAN_TEXT_PATTERN},
    )
