"""``/console/audit``: the account's audit trail with the API's filters, in pages."""

from collections.abc import Mapping
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from keyguard.console.pages import Pages, page_number, pager
from keyguard.domain.audit import ACTIONS, utc_bound
from keyguard.errors import InvalidInput
from keyguard.storage import AuditQuery

PER_PAGE = 25
FILTERS = ("key_id", "action", "from", "to")


def audit_query(account_id: int, given: Mapping[str, str], number: int) -> AuditQuery:
    """The store query for the filters as the form gives them; ``InvalidInput`` if bad."""
    key_id = given["key_id"]
    if key_id and (not key_id.isdigit() or not 1 <= int(key_id) <= 2**63 - 1):
        raise InvalidInput.parameter("key_id")
    action = given["action"] or None
    if action is not None and action not in ACTIONS:
        raise InvalidInput.parameter("action")
    return AuditQuery(
        account_id=account_id,
        key_id=int(key_id) if key_id else None,
        action=action,
        since=_time(given["from"], "from"),
        until=_time(given["to"], "to"),
        offset=(number - 1) * PER_PAGE,
        limit=PER_PAGE,
    )


def _time(text: str, name: str) -> datetime | None:
    """A datetime-local value (or any ISO 8601 time), UTC when it has no offset."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput.parameter(name) from None
    return utc_bound(moment, name)


def add_audit(router: APIRouter, pages: Pages) -> None:
    @router.get("/audit")
    async def audit(request: Request) -> Response:
        signed = await pages.signed_in(request)
        if signed is None:
            return pages.signed_out(request)
        given = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        number = page_number(request.query_params.get("page", "1"))
        try:
            query = audit_query(signed.account_id, given, number)
            records, total = await run_in_threadpool(pages.service.audit, query)
            error = None
        except InvalidInput as refused:
            records, total, error = [], 0, refused.message
        filters = {name: value for name, value in given.items() if value}
        return pages.render(
            "audit.html",
            **await pages.common(signed),
            **pager("audit", filters, number, total, PER_PAGE),
            records=records,
            total=total,
            given=given,
            actions=ACTIONS,
            error=error,
        )
