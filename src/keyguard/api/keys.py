"""``/v1/api-keys``: the Wavix-compatible key management API.

Requests reach these handlers only after :class:`~keyguard.middleware.KeyguardMiddleware`
has allowed them; :data:`~keyguard.api.requests.KeyCaller` is the key it allowed.
"""

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from keyguard.api.requests import Caller, KeyCaller, read_json
from keyguard.api.schemas import (
    ERROR_RESPONSES,
    ErrorResponse,
    RollRequest,
    SuccessResponse,
    create_request_model,
    key_model,
    request_body,
    update_request_model,
)
from keyguard.domain.fields import MAX_LABEL_LENGTH
from keyguard.errors import RateLimited
from keyguard.limits import WindowLimiter
from keyguard.service import KeyService
from keyguard.wire import key_list, key_object

MAX_KEY_ID = 2**63 - 1
MAX_PAGE = 10**9
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 100

KeyId = Annotated[
    int, Path(alias="id", ge=1, le=MAX_KEY_ID, description="The unique ID of the API key.")
]


FULL_ACCESS = "Needs a full-access key: a scoped key could read stronger keys or mint one."


def key_router(service: KeyService, writes: WindowLimiter | None, max_body_bytes: int) -> APIRouter:
    """The routes, documented with the deployment's scope groups.

    Each account may make ``writes`` changes a minute (no limit for None), in bodies
    of at most ``max_body_bytes``.
    """
    groups = service.groups
    api_key = key_model(groups)
    create_body = create_request_model(groups)
    update_body = update_request_model(groups)
    invalid: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "Missing or invalid parameter."},
        413: {"model": ErrorResponse, "description": "The body is too large (64 KiB)."},
        422: {"model": ErrorResponse, "description": "A field value is not acceptable."},
    }
    missing: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse, "description": "No such key in this account."}
    }
    router = APIRouter(prefix="/v1/api-keys", tags=["API Keys"], responses=ERROR_RESPONSES)

    def render(view: Any) -> dict[str, Any]:
        return key_object(view, groups)

    def charged(caller: Caller) -> Caller:
        if writes is not None:
            wait = writes.hit(caller.account_id)
            if wait is not None:
                raise RateLimited(f"Too many changes to API keys; retry in {wait} seconds", wait)
        return caller

    async def writer(caller: KeyCaller) -> Caller:
        """The caller of a write, charged against its account's write limit."""
        return charged(caller)

    # The key id is a parameter here so that it is validated first: a request for a
    # key that cannot exist is a 404 and costs the account no write.
    async def key_writer(caller: KeyCaller, _key_id: KeyId) -> Caller:
        """The caller of a change to a key, charged against its account's write limit."""
        return charged(caller)

    writing, key_writing = Depends(writer), Depends(key_writer)

    @router.get(
        "",
        operation_id="api_keys_list",
        summary="List API keys",
        description="The account's keys by id, a bare JSON array, each secret as "
        "KEYGUARD_SECRET_DISPLAY says (in full by default, else masked). " + FULL_ACCESS,
        responses={200: {"model": list[api_key]}, **invalid},  # type: ignore[valid-type]
    )
    async def list_keys(
        request: Request,
        caller: KeyCaller,
        label: Annotated[
            str | None,
            Query(max_length=MAX_LABEL_LENGTH, description="Case-insensitive substring."),
        ] = None,
        page: Annotated[
            int | None, Query(ge=1, le=MAX_PAGE, description="From 1; with it, one page.")
        ] = None,
        per_page: Annotated[
            int | None,
            Query(ge=1, le=MAX_PER_PAGE, description=f"Keys per page ({DEFAULT_PER_PAGE})."),
        ] = None,
    ) -> Response:
        account_id = caller.account_id
        if page is None and per_page is None:
            views = await run_in_threadpool(service.list_keys, account_id, label)
            return _keys_response(key_list(views, groups), {"X-Total-Count": str(len(views))})
        number, size = page or 1, per_page or DEFAULT_PER_PAGE
        found = await run_in_threadpool(service.page_of_keys, account_id, label, number, size)
        headers = {
            "X-Total-Count": str(found.total),
            "Link": page_links(request.url.path, label, number, size, found.total),
        }
        return _keys_response(key_list(found.views, groups), headers)

    @router.post(
        "",
        operation_id="api_keys_create",
        summary="Create an API key",
        description="A new key; this answer always carries its secret in full. With "
        "`scopes_enabled` the key may call only the routes its scope groups allow (the "
        "document's `x-keyguard-routes` lists them); with `restricted`, only from "
        "`permitted_ips`. " + FULL_ACCESS,
        responses={200: {"model": api_key}, **invalid},
        openapi_extra=request_body(create_body, required=True),
    )
    async def create_key(request: Request, caller: Annotated[Caller, writing]) -> JSONResponse:
        body = await read_json(request, max_body_bytes, required=True)
        view = await run_in_threadpool(service.create_key, caller.account_id, body, caller.actor)
        return JSONResponse(render(view))

    @router.get(
        "/{id}",
        operation_id="api_keys_get",
        summary="Get an API key",
        description="One key of the account; another account's key id answers 404. " + FULL_ACCESS,
        responses={200: {"model": api_key}, **missing},
    )
    async def get_key(caller: KeyCaller, key_id: KeyId) -> JSONResponse:
        view = await run_in_threadpool(service.get_key, caller.account_id, key_id)
        return JSONResponse(render(view))

    @router.patch(
        "/{id}",
        operation_id="api_keys_update",
        summary="Update an API key",
        description="Changes only the fields given (JSON null means not given); every "
        "keyguard process enforces the change within a second. " + FULL_ACCESS,
        responses={200: {"model": api_key}, **invalid, **missing},
        openapi_extra=request_body(update_body, required=False),
    )
    async def update_key(
        request: Request, caller: Annotated[Caller, key_writing], key_id: KeyId
    ) -> JSONResponse:
        body = await read_json(request, max_body_bytes, required=False)
        view = await run_in_threadpool(
            service.update_key, caller.account_id, key_id, body, caller.actor
        )
        return JSONResponse(render(view))

    @router.delete(
        "/{id}",
        operation_id="api_keys_delete",
        summary="Delete an API key",
        description="Revokes the key for good: refused here at once, by every keyguard "
        "process within a second. " + FULL_ACCESS,
        responses={200: {"model": SuccessResponse}, **missing},
    )
    async def delete_key(caller: Annotated[Caller, key_writing], key_id: KeyId) -> JSONResponse:
        await run_in_threadpool(service.delete_key, caller.account_id, key_id, caller.actor)
        return JSONResponse({"success": True})

    @router.post(
        "/{id}/roll",
        operation_id="api_keys_roll",
        summary="Roll an API key",
        description="A new key (new id and secret, shown in full) with the same label, "
        "scopes, allow-list and expiry, naming its predecessor in `rolled_from`. The old "
        "key keeps working for `grace_seconds` (default a day, at most 7 days, never past "
        "its own expiry) and then is refused like an expired key. " + FULL_ACCESS,
        responses={
            200: {"model": api_key},
            **invalid,
            **missing,
            409: {"model": ErrorResponse, "description": "The key has expired."},
        },
        openapi_extra=request_body(RollRequest, required=False),
    )
    async def roll_key(
        request: Request, caller: Annotated[Caller, key_writing], key_id: KeyId
    ) -> JSONResponse:
        body = await read_json(request, max_body_bytes, required=False)
        _old, new = await run_in_threadpool(
            service.roll_key, caller.account_id, key_id, body, caller.actor
        )
        return JSONResponse(render(new))

    for action, active in (("activate", True), ("deactivate", False)):
        _add_toggle(router, service, key_writing, action, active, missing)

    return router


def _keys_response(body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, media_type="application/json", headers=headers)


def page_links(path: str, label: str | None, number: int, per_page: int, total: int) -> str:
    """An RFC 8288 ``Link`` header: the first, previous, next and last pages.

    The links are relative and carry only the list's own parameters: a key sent as
    ``?appid=`` must not come back in a header that proxies log.
    """
    last = max(1, -(-total // per_page))
    pages = {"first": 1, "prev": number - 1, "next": number + 1, "last": last}
    links = []
    for relation, target in pages.items():
        if 1 <= target <= last and not (relation in ("prev", "next") and target == number):
            query: dict[str, str | int] = {"page": target, "per_page": per_page}
            if label:
                query = {"label": label, **query}
            links.append(f'<{path}?{urlencode(query)}>; rel="{relation}"')
    return ", ".join(links)


def _add_toggle(
    router: APIRouter,
    service: KeyService,
    key_writing: Any,
    action: str,
    active: bool,
    missing: dict[int | str, dict[str, Any]],
) -> None:
    async def toggle(caller: Annotated[Caller, key_writing], key_id: KeyId) -> JSONResponse:
        await run_in_threadpool(service.set_active, caller.account_id, key_id, active, caller.actor)
        return JSONResponse({"success": True})

    router.add_api_route(
        f"/{{id}}/{action}",
        toggle,
        methods=["PATCH"],
        operation_id=f"api_keys_{action}",
        summary=f"{action.capitalize()} an API key (older generation)",
        description=f"Sets the key's `active` to {str(active).lower()}, as the older "
        "generation of Wavix's API does; every keyguard process enforces it within a "
        "second. " + FULL_ACCESS,
        responses={200: {"model": SuccessResponse}, **missing},
    )
