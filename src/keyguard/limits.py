"""Abuse limits: at most so many events per key (an IP, an account) per window.

Fixed one-minute windows in plain dicts: the check on the allowed path is one
truth test of a dict, and memory stays bounded whatever an attacker sends.
Limits are per process; with N workers a client gets up to N times the limit.
"""

import time
from collections.abc import Callable, Hashable
from math import ceil

MAX_TRACKED = 100_000


class WindowLimiter:
    """Count events per key in fixed windows; refuse once a key exceeds ``limit``."""

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_tracked = max_tracked
        self._counts: dict[Hashable, tuple[float, int]] = {}  # key -> (window start, events)
        self.blocked: dict[Hashable, float] = {}  # key -> when it may try again

    def hit(self, key: Hashable) -> int | None:
        """Count one event; the seconds to wait if that exceeds the limit, else None."""
        now = self._clock()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        if len(self._counts) >= self._max_tracked and key not in self._counts:
            self._counts.clear()  # under a flood of distinct keys, start over
        self._counts[key] = (start, count)
        if count <= self.limit:
            return None
        until = start + self.window
        if len(self.blocked) >= self._max_tracked:
            self.blocked.clear()
        self.blocked[key] = until
        return ceil(until - now)

    def retry_after(self, key: Hashable) -> int | None:
        """Seconds until ``key`` may try again, or None if it is not blocked."""
        until = self.blocked.get(key)
        if until is None:
            return None
        remaining = until - self._clock()
        if remaining <= 0:
            del self.blocked[key]
            return None
        return ceil(remaining)
