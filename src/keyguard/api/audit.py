"""``GET /v1/audit-log``: an account's own trail of changes, newest first."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from keyguard.api.schemas import ERROR_RESPONSES, AuditPage, ErrorResponse
from keyguard.decide import Decision
from keyguard.errors import InvalidInput
from keyguard.service import KeyService
from keyguard.storage import AuditQuery
from keyguard.wire import audit_object, page

MAX_PER_PAGE = 100
Action = Literal[
    "account.create", "account.suspend", "account.resume", "account.delete",
    "key.create", "key.update", "key.activate", "key.deactivate", "key.delete",
]  # fmt: skip


def audit_router() -> APIRouter:
    router = APIRouter(tags=["Audit"], responses=ERROR_RESPONSES)

    @router.get(
        "/v1/audit-log",
        operation_id="audit_log_list",
        summary="List the account's audit trail",
        responses={
            200: {"model": AuditPage},
            400: {"model": ErrorResponse, "description": "Invalid filter."},
        },
    )
    async def audit_log(
        request: Request,
        key_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        action: Action | None = None,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 25,
    ) -> JSONResponse:
        decision: Decision = request.state.keyguard
        assert decision.account_id is not None
        query = AuditQuery(
            account_id=decision.account_id,
            key_id=key_id,
            action=action,
            since=_utc(since, "from"),
            until=_utc(until, "to"),
            offset=(page_number - 1) * per_page,
            limit=per_page,
        )
        service: KeyService = request.app.state.keyguard.service
        records, total = await run_in_threadpool(service.audit, query)
        items = [audit_object(record) for record in records]
        return JSONResponse(page(items, page_number, per_page, total))

    return router


def _utc(moment: datetime | None, name: str) -> datetime | None:
    """A filter time in UTC; one without a zone is read as UTC, like every keyguard time.

    A time whose UTC instant falls outside years 1-9999 (``9999-12-31T23:00:00-05:00``)
    has no representation in Python or in a database column, so it is refused.
    """
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput.parameter(name) from None
