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
