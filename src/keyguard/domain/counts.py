"""Request counts over time: the buckets they are kept in and the series they form.

Counts are kept per key in three granularities at once, so that a series of any of
them is read, never computed from finer rows: a minute bucket, an hour bucket and a
day bucket each receive every count (UTC; a day starts at midnight UTC).
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, IntEnum

from keyguard.domain.records import timestamp


class Outcome(IntEnum):
    """What became of a request that presented a known key: a column of the counts."""

    ALLOWED = 0
    UNAUTHORIZED = 1  # 401: the key exists but cannot be used (inactive, expired, suspended)
    FORBIDDEN = 2  # 403: the address, the scope or the route
    RATE_LIMITED = 3  # 429: the key's rate limit
    NO_CREDITS = 4  # 429: the key's credits


OUTCOMES = tuple(outcome.name.lower() for outcome in Outcome)
MAX_POINTS = 10_080  # a week of minutes: the longest series one request may ask for


class Granularity(Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def step(self) -> timedelta:
        return _STEPS[self]

    def floor(self, moment: datetime) -> datetime:
        """The start of the bucket ``moment`` falls in."""
        moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
        if self is Granularity.MINUTE:
            return moment
        moment = moment.replace(minute=0)
        return moment if self is Granularity.HOUR else moment.replace(hour=0)


_STEPS = {
    Granularity.MINUTE: timedelta(minutes=1),
    Granularity.HOUR: timedelta(hours=1),
    Granularity.DAY: timedelta(days=1),
}


@dataclass(frozen=True, slots=True)
class Point:
    """The counts of one bucket, in the order of ``OUTCOMES``."""

    start: datetime
    counts: tuple[int, ...]

    def document(self) -> dict[str, object]:
        return {
            "start": timestamp(self.start),
            **dict(zip(OUTCOMES, self.counts, strict=True)),
        }


def bucket_starts(granularity: Granularity, since: datetime, until: datetime) -> Iterator[datetime]:
    """Every bucket start from the one holding ``since`` to the last before ``until``."""
    start = granularity.floor(since)
    while start < until:
        yield start
        start += granularity.step


def points_between(since: datetime, until: datetime, granularity: Granularity) -> int:
    floor = granularity.floor(since)
    return max(0, -(-int((until - floor).total_seconds()) // int(granularity.step.total_seconds())))


def dense_series(
    rows: Mapping[datetime, Sequence[int]],
    granularity: Granularity,
    since: datetime,
    until: datetime,
) -> list[Point]:
    """The series from ``since`` to ``until``, a point per bucket, zeros where none was kept."""
    zero = (0,) * len(OUTCOMES)
    return [
        Point(start, tuple(rows.get(start, zero)))
        for start in bucket_starts(granularity, since, until)
    ]


def totals(rows: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The counts of several buckets added up, outcome by outcome."""
    return (
        tuple(sum(column) for column in zip(*rows, strict=True)) if rows else (0,) * len(OUTCOMES)
    )
