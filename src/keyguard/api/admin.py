"""``/admin/v1/``: the operator API of the platform that runs keyguard.

Enabled only when ``KEYGUARD_ADMIN_TOKEN`` is set; callers present it as their one
bearer token, compared in constant time, and a wrong token counts against the
caller's failed-authentication limit (:mod:`keyguard.api.tokens`). It manages
accounts, reads any account's keys (never their secrets) and every account's
audit trail, deleted accounts' included.
"""

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from keyguard.api.audit import Filters, audit_page
from keyguard.api.requests import ClientAddress, read_json
from keyguard.api.schemas import (
    ERROR_RESPONSES,
    AccountCreateRequest,
    AccountObject,
    AccountsPage,
    AuditPage,
    ErrorResponse,
    SuccessResponse,
    key_model,
    request_body,
)
from keyguard.api.tokens import token_holder
from keyguard.domain import keys
from keyguard.domain.records import AccountStatus, Actor
from keyguard.limits import WindowLimiter
from keyguard.service import KeyService
from keyguard.wire import account_object, key_object, page

AccountId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The account's id.")]


def admin_router(
    service: KeyService,
    token: SecretStr,
    client: ClientAddress,
    failures: WindowLimiter | None,
    max_body_bytes: int,
) -> APIRouter:
    """The operator's routes, for callers presenting ``token``.

    A wrong token counts against ``failures`` for the client address ``client`` finds.
    """
    holder = token_holder(token, client, failures)

    async def operator_actor(address: Annotated[str | None, Depends(holder)]) -> Actor:
        """The operator behind a request; a 401 for anyone else, a 429 for a caller
        that failed to authenticate too often."""
        return Actor("operator", None, address)

    operating = Depends(operator_actor)
    groups = service.groups
    router = APIRouter(prefix="/admin/v1", tags=["Operator"], responses=ERROR_RESPONSES)
    missing: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse, "description": "No such account."}
    }

    @router.post(
        "/accounts",
        operation_id="admin_accounts_create",
        summary="Create an account with its first full-access key (shown once)",
        description="A new account and its first full-access key, whose secret only this "
        "answer shows in full; the operator's other answers mask it.",
        responses={
            400: {"model": ErrorResponse, "description": "Missing or invalid name or body."},
            413: {"model": ErrorResponse, "description": "The body is too large (64 KiB)."},
            422: {"model": ErrorResponse, "description": "The name is too long."},
        },
        openapi_extra=request_body(AccountCreateRequest, required=True),
    )
    async def create_account(
        request: Request, operator: Annotated[Actor, operating]
    ) -> JSONResponse:
        body = await read_json(request, max_body_bytes, required=True)
        name = body.get("name") if isinstance(body, dict) else None
        account, view = await run_in_threadpool(service.create_account, name, operator)
        return JSONResponse(
            {"account": account_object(account), "api_key": key_object(view, groups)}
        )

    @router.get(
        "/accounts",
        operation_id="admin_accounts_list",
        summary="List accounts",
        description="Accounts that are not deleted, by id, in Wavix-style pages.",
        responses={
            200: {"model": AccountsPage},
            400: {"model": ErrorResponse, "description": "Invalid page or per_page."},
        },
    )
    async def list_accounts(
        _operator: Annotated[Actor, operating],
        page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=100)] = 25,
    ) -> JSONResponse:
        found = await run_in_threadpool(service.list_accounts)
        start = (page_number - 1) * per_page
        items = [account_object(account) for account in found[start : start + per_page]]
        return JSONResponse(page(items, page_number, per_page, len(found)))

    @router.get(
        "/accounts/{account_id}",
        operation_id="admin_accounts_get",
        summary="Get an account",
        description="One account that is not deleted, with its status.",
        responses={200: {"model": AccountObject}, **missing},
    )
    async def get_account(_operator: Annotated[Actor, operating], account_id: AccountId) -> Any:
        account = await run_in_threadpool(service.get_account, account_id)
        return JSONResponse(account_object(account))

    for action, status in (("suspend", AccountStatus.SUSPENDED), ("resume", AccountStatus.ACTIVE)):
        _add_status_route(router, service, operating, action, status, missing)

    @router.delete(
        "/accounts/{account_id}",
        operation_id="admin_accounts_delete",
        summary="Delete an account and all its keys",
        description="The account and every key of it, for good: its keys fail with 401 "
        "here at once and in every keyguard process within a second. Its audit trail "
        "stays readable at `GET /admin/v1/audit-log?account_id=`.",
        responses={200: {"model": SuccessResponse}, **missing},
    )
    async def delete_account(
        operator: Annotated[Actor, operating], account_id: AccountId
    ) -> JSONResponse:
        await run_in_threadpool(
            service.set_account_status, account_id, AccountStatus.DELETED, operator
        )
        return JSONResponse({"success": True})

    @router.get(
        "/accounts/{account_id}/keys",
        operation_id="admin_accounts_keys_list",
        summary="List an account's keys, secrets masked",
        description="The account's keys by id, each secret masked as `kg_********abcd`.",
        responses={200: {"model": list[key_model(groups)]}, **missing},  # type: ignore[misc]
    )
    async def list_keys(_operator: Annotated[Actor, operating], account_id: AccountId) -> Any:
        await run_in_threadpool(service.get_account, account_id)
        views = await run_in_threadpool(service.list_keys, account_id)
        masked = [replace(view, value=keys.mask(view.value)) for view in views]
        return JSONResponse([key_object(view, groups) for view in masked])

    @router.get(
        "/audit-log",
        operation_id="admin_audit_log_list",
        summary="List every account's audit trail",
        description="Every change to every account and its keys, newest first, the "
        "operator's own included; `account_id` narrows it to one account, also after "
        "that account was deleted. Filters and pages as `GET /v1/audit-log`.",
        responses={
            200: {"model": AuditPage},
            400: {"model": ErrorResponse, "description": "Invalid filter."},
        },
    )
    async def audit_log(
        _operator: Annotated[Actor, operating],
        filters: Filters,
        account_id: Annotated[
            int | None, Query(ge=1, le=2**63 - 1, description="Only this account's trail.")
        ] = None,
    ) -> JSONResponse:
        return await audit_page(service, filters, account_id)

    return router


def _add_status_route(
    router: APIRouter,
    service: KeyService,
    operating: Any,
    action: str,
    status: AccountStatus,
    missing: dict[int | str, Any],
) -> None:
    async def change(operator: Annotated[Actor, operating], account_id: AccountId) -> JSONResponse:
        account = await run_in_threadpool(service.set_account_status, account_id, status, operator)
        return JSONResponse(account_object(account))

    router.add_api_route(
        f"/accounts/{{account_id}}/{action}",
        change,
        methods=["POST"],
        operation_id=f"admin_accounts_{action}",
        summary=f"{action.capitalize()} an account",
        description=(
            "Every key of the account fails with 401, here at once and in every keyguard "
            "process within a second, until the account is resumed."
            if status is AccountStatus.SUSPENDED
            else "The account's keys work again, here at once and everywhere within a second."
        ),
        responses={200: {"model": AccountObject}, **missing},
    )
