"""The audit trail over HTTP, newest first.

``GET /v1/audit-log`` is an account's own trail; the operator's view of every
account, ``GET /admin/v1/audit-log`` (:mod:`keyguard.api.admin`), takes the same
filters (:data:`Filters`) and answers with the same pages (:func:`audit_page`).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from keyguard.api.requests import KeyCaller
from keyguard.api.schemas import ERROR_RESPONSES, AuditPage, ErrorResponse
from keyguard.domain.audit import utc_bound
from keyguard.domain.records import Action
from keyguard.service import KeyService
from keyguard.storage import AuditQuery
from keyguard.wire import audit_object, page

MAX_PER_PAGE = 100
TIMES = (
    "ISO 8601, e.g. 2026-11-01T00:00:00Z or 2026-11-01T01:00:00+01:00; UTC when no offset is given."
)


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """The query parameters of an audit-log request, validated."""

    key_id: int | None
    action: str | None
    since: datetime | None
    until: datetime | None
    page: int
    per_page: int

    def query(self, account_id: int | None) -> AuditQuery:
        """The store query for one account's trail, or every account's for ``None``."""
        return AuditQuery(
            account_id=account_id,
            key_id=self.key_id,
            action=self.action,
            since=self.since,
            until=self.until,
            offset=(self.page - 1) * self.per_page,
            limit=self.per_page,
        )


def audit_filters(
    key_id: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Only changes to this key.")
    ] = None,
    action: Annotated[Action | None, Query(description="Only this action.")] = None,
    since: Annotated[
        datetime | None, Query(alias="from", description=f"From this time on. {TIMES}")
    ] = None,
    until: Annotated[
        datetime | None, Query(alias="to", description=f"Before this time. {TIMES}")
    ] = None,
    page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 25,
) -> AuditFilters:
    return AuditFilters(
        key_id=key_id,
        action=action,
        since=utc_bound(since, "from"),
        until=utc_bound(until, "to"),
        page=page_number,
        per_page=per_page,
    )


Filters = Annotated[AuditFilters, Depends(audit_filters)]


async def audit_page(
    service: KeyService, filters: AuditFilters, account_id: int | None
) -> JSONResponse:
    """One Wavix-style page of the records ``filters`` select, of one account or of all."""
    records, total = await run_in_threadpool(service.audit, filters.query(account_id))
    items = [audit_object(record) for record in records]
    return JSONResponse(page(items, filters.page, filters.per_page, total))


def audit_router(service: KeyService) -> APIRouter:
    router = APIRouter(tags=["Audit"], responses=ERROR_RESPONSES)

    @router.get(
        "/v1/audit-log",
        operation_id="audit_log_list",
        summary="List the account's audit trail",
        description="Every change to the account and its keys, newest first: when, what, "
        "which key or operator made it, from which address, and the settings before and "
        "after (never a secret). Needs a full-access key.",
        responses={
            200: {"model": AuditPage},
            400: {"model": ErrorResponse, "description": "Invalid filter."},
        },
    )
    async def audit_log(caller: KeyCaller, filters: Filters) -> JSONResponse:
        return await audit_page(service, filters, caller.account_id)

    return router
