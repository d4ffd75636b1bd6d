"""The usage charts' geometry: pure functions of a series, checked without a browser."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from keyguard.console import charts
from keyguard.domain.counts import Granularity, Point

START = datetime(2030, 1, 1, 10, tzinfo=UTC)


def series(*counts: tuple[int, ...]) -> list[Point]:
    return [Point(START + timedelta(hours=index), row) for index, row in enumerate(counts)]


def heights(path: str) -> list[float]:
    """The height of each bar of a chart's path (``M x y_low V y_high h w V y_low Z``)."""
    bars = re.findall(r"M[\d.]+ ([\d.]+)V([\d.]+)h", path)
    return [float(low) - float(high) for low, high in bars]


@pytest.mark.parametrize(
    ("peak", "top", "step"),
    [(0, 1, 1), (1, 1, 1), (3, 3, 1), (5, 6, 2), (97, 100, 50), (1234, 1500, 500)],
)
def test_the_y_axis_ends_at_a_round_number_at_or_above_the_peak(
    peak: int, top: int, step: int
) -> None:
    assert charts.nice_top(peak) == (top, step)


def test_bars_stack_each_outcome_on_the_ones_below_in_proportion() -> None:
    chart = charts.bar_chart(
        series((6, 0, 2, 0, 0), (0, 0, 0, 0, 0), (1, 1, 0, 0, 0)), Granularity.HOUR
    )

    assert chart.total == 10
    by_outcome = {band.outcome: band for band in chart.bands}
    assert {name: band.total for name, band in by_outcome.items()} == {
        "allowed": 7,
        "unauthorized": 1,
        "forbidden": 2,
        "rate_limited": 0,
        "no_credits": 0,
    }
    unit = charts.PLOT_HEIGHT / 8  # the peak, 8, is the top of the axis
    assert heights(by_outcome["allowed"].path) == pytest.approx([6 * unit, unit])
    assert heights(by_outcome["forbidden"].path) == pytest.approx([2 * unit])
    assert by_outcome["rate_limited"].path == ""
    assert [tick.label for tick in chart.y_ticks] == ["0", "2", "4", "6", "8"]


def test_the_time_axis_names_buckets_in_utc_as_finely_as_they_are_kept() -> None:
    chart = charts.bar_chart(series(*[(1, 0, 0, 0, 0)] * 24), Granularity.HOUR)
    assert [tick.label for tick in chart.x_ticks] == [
        "01 Jan 10:00",
        "01 Jan 15:00",
        "01 Jan 20:00",
        "02 Jan 01:00",
        "02 Jan 06:00",
    ]
    assert charts.bucket_label(START, Granularity.MINUTE) == "10:00"
    assert charts.bucket_label(START, Granularity.DAY) == "01 Jan 2030"


def test_a_sparkline_adds_allowed_and_refused_and_draws_nothing_without_requests() -> None:
    line = charts.sparkline(series((3, 1, 0, 0, 0), (0, 0, 0, 0, 0), (0, 0, 0, 2, 2)))
    assert line.total == 8
    assert line.path.count("M") == 2
    assert charts.sparkline(series((0, 0, 0, 0, 0))).path == ""
    assert charts.requests(1) == "1 request"
    assert charts.requests(1234) == "1,234 requests"
