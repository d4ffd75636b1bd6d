"""Percentiles and latency summaries of measured durations."""

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between closest ranks."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of a series of request durations, in milliseconds."""

    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Latency":
        milliseconds = [value * 1000 for value in seconds]
        return cls(
            samples=len(milliseconds),
            p50_ms=percentile(milliseconds, 50),
            p95_ms=percentile(milliseconds, 95),
            p99_ms=percentile(milliseconds, 99),
            max_ms=max(milliseconds),
        )


@dataclass(frozen=True, slots=True)
class Interval:
    """A distribution-free confidence interval for a median, from order statistics."""

    low: float
    high: float
    confidence: float  # the interval's actual coverage, at least the one asked for if possible

    def verdict(self, target: float, *, at_least: bool = True) -> str:
        """``met`` or ``missed`` when the whole interval is on one side of ``target``."""
        above, below = self.low >= target, self.high < target
        if not at_least:
            above, below = self.high <= target, self.low > target
        return "met" if above else "missed" if below else "not settled"


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Where the median of the population the values come from lies, with ``confidence``.

    The k-th smallest and k-th largest values bound the median with probability
    1 - 2·P(Binomial(n, ½) < k), whatever the distribution: the largest k that
    reaches ``confidence`` is taken; with too few values, the whole range.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values to bound the median of")
    below = 0.0  # P(Binomial(n, 1/2) < k)
    best = (1, 1 - 2 * 0.5**n)  # the whole range
    for k in range(1, (n + 1) // 2 + 1):
        below += math.comb(n, k - 1) * 0.5**n
        coverage = 1 - 2 * below
        if coverage < confidence:
            break
        best = (k, coverage)
    k, coverage = best
    return Interval(ordered[k - 1], ordered[n - k], coverage)
