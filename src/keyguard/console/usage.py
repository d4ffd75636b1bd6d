"""``/console/keys/{id}/usage``: one key's requests by outcome, charted, and the sparklines.

Counts are read through :meth:`~keyguard.service.KeyService.usage_series`, as
``GET /v1/api-keys/{id}/usage`` reads them; they reach the database at every
usage flush (``KEYGUARD_USAGE_FLUSH_INTERVAL``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from keyguard.console import charts
from keyguard.console.pages import NO_SUCH_KEY, KeyId, Pages
from keyguard.console.sessions import now
from keyguard.domain.counts import Granularity
from keyguard.errors import NotFound
from keyguard.service import KeyService, KeyView, Span


@dataclass(frozen=True, slots=True)
class Window:
    """A span the page offers: how far back from now, in buckets of which size."""

    name: str
    title: str
    granularity: Granularity
    length: timedelta


WINDOWS = {
    window.name: window
    for window in (
        Window("hour", "Last hour", Granularity.MINUTE, timedelta(hours=1)),
        Window("day", "Last day", Granularity.MINUTE, timedelta(days=1)),
        Window("week", "Last 7 days", Granularity.HOUR, timedelta(days=7)),
        Window("quarter", "Last 90 days", Granularity.DAY, timedelta(days=90)),
    )
}
DEFAULT_WINDOW = "day"
SPARKLINE = Window("sparkline", "Last 24 hours", Granularity.HOUR, timedelta(hours=24))


def span_of(window: Window, at: datetime) -> Span:
    """The window's whole buckets up to and including the one ``at`` falls in."""
    until = window.granularity.floor(at) + window.granularity.step
    return Span(until - window.length, until)


def sparklines(
    service: KeyService, account_id: int, views: Sequence[KeyView]
) -> dict[int, charts.Sparkline]:
    """The keys' hourly requests over the last 24 hours, read at once."""
    ids = [view.key.id for view in views]
    span = span_of(SPARKLINE, now())
    series = service.usage_of_keys(account_id, ids, SPARKLINE.granularity, span)
    return {key_id: charts.sparkline(points) for key_id, points in series.items()}


def add_usage(router: APIRouter, pages: Pages) -> None:
    service = pages.service

    @router.get("/keys/{key_id}/usage")
    async def usage(request: Request, key_id: KeyId, window: str = DEFAULT_WINDOW) -> Response:
        signed = await pages.signed_in(request)
        if signed is None:
            return pages.signed_out(request)
        shown = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])
        span = span_of(shown, now())
        try:
            view = await run_in_threadpool(service.get_key, signed.account_id, key_id)
            points = await run_in_threadpool(
                service.usage_series, signed.account_id, key_id, shown.granularity, span
            )
        except NotFound:
            return pages.refusal(404, NO_SUCH_KEY)
        return pages.render(
            "usage.html",
            **await pages.common(signed),
            view=view,
            window=shown,
            windows=WINDOWS.values(),
            span=span,
            chart=charts.bar_chart(points, shown.granularity),
            busy=[point for point in points if any(point.counts)],
        )
