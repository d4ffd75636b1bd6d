"""Usage charts drawn on the server as inline SVG: no script, no third-party asset.

Plain functions of a series of :class:`~keyguard.domain.counts.Point`: they compute
the geometry in a fixed view box (bar paths, axis ticks, labels in UTC), and the
templates draw it, styled by console.css, so the page's Content-Security-Policy
needs nothing more than ``'self'``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from keyguard.domain.counts import OUTCOMES, Granularity, Point

WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 60, 12, 12, 52  # room for the axes' labels
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
X_TICKS = 5
Y_TICKS = 4
SPARK_WIDTH, SPARK_HEIGHT = 96, 24
TICK_FORMATS = {
    Granularity.MINUTE: "%H:%M",
    Granularity.HOUR: "%d %b %H:00",
    Granularity.DAY: "%d %b %Y",
}
OUTCOME_NAMES = {
    "allowed": "Allowed",
    "unauthorized": "Unauthorized (401)",
    "forbidden": "Forbidden (403)",
    "rate_limited": "Rate limited (429)",
    "no_credits": "No credits (429)",
}


@dataclass(frozen=True, slots=True)
class Band:
    """One outcome's part of every bar, as one SVG path."""

    outcome: str
    name: str
    path: str
    total: int


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A stacked bar chart of a series: a bar per bucket, a band per outcome."""

    bands: list[Band]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    total: int


@dataclass(frozen=True, slots=True)
class Sparkline:
    path: str
    total: int


def nice_top(peak: int, ticks: int = Y_TICKS) -> tuple[int, int]:
    """A round top for the y axis at or above ``peak``, and the step between its ticks."""
    rough = max(1, -(-peak // ticks))
    magnitude = 10 ** (len(str(rough)) - 1)
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    return step * max(1, -(-peak // step)), step


def bar_chart(points: Sequence[Point], granularity: Granularity) -> Chart:
    """The stacked bars of ``points`` (in the order of ``OUTCOMES``, bottom up)."""
    peak = max((sum(point.counts) for point in points), default=0)
    top, step = nice_top(peak)
    slot = PLOT_WIDTH / max(1, len(points))
    width = slot * 0.8 if slot >= 3 else slot
    paths: list[list[str]] = [[] for _ in OUTCOMES]
    for index, point in enumerate(points):
        x = LEFT + index * slot + (slot - width) / 2
        base = 0
        for column, count in enumerate(point.counts):
            if count:
                y_low, y_high = _y(base, top), _y(base + count, top)
                paths[column].append(f"M{x:.2f} {y_low:.2f}V{y_high:.2f}h{width:.2f}V{y_low:.2f}Z")
                base += count
    totals = [sum(point.counts[column] for point in points) for column in range(len(OUTCOMES))]
    bands = [
        Band(outcome, OUTCOME_NAMES[outcome], "".join(paths[column]), totals[column])
        for column, outcome in enumerate(OUTCOMES)
    ]
    y_ticks = [Tick(_y(value, top), f"{value:,}") for value in range(0, top + 1, step)]
    return Chart(bands, _x_ticks(points, granularity, slot), y_ticks, sum(totals))


def _y(count: int, top: int) -> float:
    return TOP + PLOT_HEIGHT * (1 - count / top)


def _x_ticks(points: Sequence[Point], granularity: Granularity, slot: float) -> list[Tick]:
    every = max(1, -(-len(points) // X_TICKS))
    return [
        Tick(LEFT + (index + 0.5) * slot, bucket_label(points[index].start, granularity))
        for index in range(0, len(points), every)
    ]


def bucket_label(start: datetime, granularity: Granularity) -> str:
    """How an axis names a bucket: its start in UTC, as fine as the buckets are."""
    return start.strftime(TICK_FORMATS[granularity])


def sparkline(points: Sequence[Point]) -> Sparkline:
    """Tiny bars of each bucket's requests, allowed and refused alike."""
    sums = [sum(point.counts) for point in points]
    peak = max(sums, default=0)
    slot = SPARK_WIDTH / max(1, len(sums))
    bars = [
        f"M{index * slot + 0.5:.2f} {SPARK_HEIGHT}v{-max(1.0, SPARK_HEIGHT * count / peak):.2f}"
        f"h{slot - 1:.2f}V{SPARK_HEIGHT}Z"
        for index, count in enumerate(sums)
        if count
    ]
    return Sparkline("".join(bars), sum(sums))


def requests(count: int) -> str:
    """``1,234 requests``."""
    return f"{count:,} request{'' if count == 1 else 's'}"
