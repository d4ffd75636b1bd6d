"""Per-key rate limits: the rule, with no clock and no I/O.

A key with a :class:`RateLimit` may make ``limit`` requests per ``duration``
seconds, counted over a sliding window approximated by two fixed windows (the
weighted two-window counter): time is cut into windows of ``duration`` seconds
from the epoch, and at a fraction ``f`` into the current window the count is

    previous * (1 - f) + current

where ``previous`` and ``current`` are the requests allowed in the previous and
the current window. A request is allowed while that count is below ``limit``;
a refused request is not counted. Under a steady load this admits ``limit``
requests per ``duration``, spread evenly; its known weakness is an edge: ``limit``
requests at the very end of one window followed by a steady load lets up to
about twice ``limit`` through in the ``duration`` that straddles the edge.
"""

from dataclasses import dataclass
from math import floor
from typing import Any, Final, Literal

from keyguard.errors import InvalidInput

MAX_LIMIT: Final = 1_000_000_000
MAX_DURATION: Final = 24 * 3600
# PATCH treats JSON null as "not given", so removing a limit needs a value of its own.
NO_LIMIT: Final = "none"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` requests per ``duration`` seconds."""

    limit: int
    duration: int

    def document(self) -> dict[str, int]:
        """As the wire, the audit trail and the database show it."""
        return {"limit": self.limit, "duration": self.duration}

    @classmethod
    def of(cls, document: Any) -> "RateLimit | None":
        """From :meth:`document`'s form, or ``None`` for a key without a limit."""
        if not document:
            return None
        return cls(int(document["limit"]), int(document["duration"]))


def parse_rate_limit(value: object) -> RateLimit | Literal["none"] | None:
    """A request's ``ratelimit``: ``None`` when not given, ``"none"`` to remove one.

    Wavix's refusals: 400 for a wrong type, 422 for a number out of range.
    """
    if value is None:
        return None
    if value == NO_LIMIT:
        return NO_LIMIT
    if not isinstance(value, dict) or set(value) != {"limit", "duration"}:
        raise InvalidInput.parameter("ratelimit")
    limit, duration = value["limit"], value["duration"]
    if not _is_integer(limit) or not _is_integer(duration):
        raise InvalidInput.parameter("ratelimit")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"Rate limit must be between 1 and {MAX_LIMIT} requests", 422)
    if not 1 <= duration <= MAX_DURATION:
        raise InvalidInput(
            f"Rate limit duration must be between 1 and {MAX_DURATION} seconds (1 day)", 422
        )
    return RateLimit(limit, duration)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def weighted_count(previous: float, current: float, fraction: float) -> float:
    """The sliding-window count at ``fraction`` (0 to 1) into the current window."""
    return previous * (1.0 - fraction) + current


def seconds_until_allowed(
    previous: float, current: float, limit: float, duration: int, elapsed: float
) -> int:
    """Whole seconds (at least 1) after which the weighted count is below ``limit``,
    ``elapsed`` seconds into the current window, if nothing more is allowed meanwhile.

    The count must fall strictly below the limit, so a retry at exactly the
    moment it reaches it would still be refused: the answer is the next second.
    """
    if current < limit and previous > 0:
        # The previous window's weight must shrink enough: previous * (1 - f) < limit - current.
        wait = duration * (1.0 - (limit - current) / previous) - elapsed
    elif current < limit:
        wait = 0.0
    else:
        # Not this window: in the next one, this window is "previous".
        wait = duration - elapsed + duration * max(0.0, 1.0 - limit / current)
    return max(1, floor(wait) + 1)
