"""Per-key request counts over HTTP: one key's series, and every key's totals.

Counts reach the database at every usage flush (``KEYGUARD_USAGE_FLUSH_INTERVAL``),
so the newest second or so is not in them yet.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from keyguard.api.audit import TIMES
from keyguard.api.requests import KeyCaller
from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse, UsageSeries, UsageTotals
from keyguard.domain.audit import utc_bound
from keyguard.domain.counts import MAX_POINTS, OUTCOMES, Granularity
from keyguard.domain.records import timestamp
from keyguard.service import KeyService, Span

DEFAULT_SPAN = timedelta(days=1)
MAX_KEY_ID = 2**63 - 1


def _span(since: datetime | None, until: datetime | None) -> Span:
    """The span asked for: by default the day up to now, or a day either side of a bound."""
    until = utc_bound(until, "to")
    since = utc_bound(since, "from")
    if until is None:
        until = datetime.now(UTC) if since is None else since + DEFAULT_SPAN
    return Span(until - DEFAULT_SPAN if since is None else since, until)


From = Annotated[datetime | None, Query(alias="from", description=f"Start, included. {TIMES}")]
To = Annotated[
    datetime | None, Query(alias="to", description=f"End, excluded (default: now). {TIMES}")
]


def usage_router(service: KeyService) -> APIRouter:
    router = APIRouter(tags=["Usage"], responses=ERROR_RESPONSES)
    invalid: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "A parameter that does not parse."},
        422: {"model": ErrorResponse, "description": "An empty span, or too many points."},
    }

    @router.get(
        "/v1/api-keys/{id}/usage",
        operation_id="api_keys_usage",
        summary="A key's requests over time",
        description="The key's requests by minute, hour or day (UTC buckets; from the "
        "day before `to` by default): how many were allowed, refused with 401 although "
        "the key exists (inactive, expired, suspended account), refused with 403, or "
        f"refused with 429. At most {MAX_POINTS} points. Needs a full-access key.",
        responses={200: {"model": UsageSeries}, **invalid, 404: {"model": ErrorResponse}},
    )
    async def key_usage(
        caller: KeyCaller,
        key_id: Annotated[int, Path(alias="id", ge=1, le=MAX_KEY_ID)],
        since: From = None,
        until: To = None,
        granularity: Annotated[Granularity, Query()] = Granularity.HOUR,
    ) -> JSONResponse:
        span = _span(since, until)
        points = await run_in_threadpool(
            service.usage_series, caller.account_id, key_id, granularity, span
        )
        return JSONResponse(
            {
                "key_id": key_id,
                "granularity": granularity.value,
                "from": timestamp(span.since),
                "to": timestamp(span.until),
                "items": [point.document() for point in points],
            }
        )

    @router.get(
        "/v1/usage",
        operation_id="usage_totals",
        summary="Every key's requests in a span",
        description="The account's keys that had requests in the span, each with its "
        "counts added up (keys by id). The span is counted in the finest buckets still "
        "kept for its start (minutes for the last 7 days by default, then hours, then "
        "days), whole buckets: the answer's `granularity` says which. Needs a full-access "
        "key.",
        responses={200: {"model": UsageTotals}, **invalid},
    )
    async def usage_totals(caller: KeyCaller, since: From = None, until: To = None) -> JSONResponse:
        span = _span(since, until)
        granularity, found = await run_in_threadpool(service.usage_totals, caller.account_id, span)
        items = [
            {"key_id": key_id, **dict(zip(OUTCOMES, counts, strict=True))}
            for key_id, counts in found.items()
        ]
        return JSONResponse(
            {
                "granularity": granularity.value,
                "from": timestamp(granularity.floor(span.since)),
                "to": timestamp(span.until),
                "items": items,
            }
        )

    return router
