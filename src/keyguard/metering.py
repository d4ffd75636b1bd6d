"""Metering at the gate: per-key rate limits, decided from local counts.

The decider calls :meth:`Meter.admit` for an allowed decision of a key that has
a rate limit, and only then: keys without one pay nothing. The rule is
:mod:`keyguard.domain.ratelimit`'s weighted two-window counter.

A decision never waits on the network. Each process counts what it admits in
memory; :meth:`Meter.sync`, run in the background (every 100 ms), publishes
this process's counts through a :class:`~keyguard.storage.counters.Counters`
(Redis, or the database) and reads back every process's totals. Between two
syncs a process may spend only its share of what the limit has left, so that
processes racing near the limit cannot each spend the whole remainder:

    share = (limit - weighted count - what the others claimed but did not spend)
            / live processes

the remainder of the division going to processes in turn. Each process
publishes its claim (its count plus its share) with its count, so a process
syncing after it sees the claim at once: claims never add up to more than the
limit had left, whatever order the processes sync in. A live process that has
not published in a window yet is taken to hold the share it took when the
window began. With one process (or ``memory://``) the counts are exact.

When the counters cannot be reached for longer than :data:`STALE_AFTER`, each
process keeps deciding alone, on its own counts, against ``limit / live
processes`` as last seen: the sum stays within the limit while the load is
spread, and no request waits for Redis or the database.

Threads: the hot path (one event loop) is the only writer of a window's
:class:`Count`; the sync thread is the only writer of the rest of a
:class:`Window`. A window rolls over by replacing its :class:`Count`, one
attribute store, so the sync thread always reads a count with its own index.
"""

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keyguard.domain.ratelimit import RateLimit, seconds_until_allowed

if TYPE_CHECKING:  # the middleware imports this module, and must not load SQLAlchemy
    from keyguard.storage.counters import Counters, Slot

log = logging.getLogger("keyguard.metering")

RATE_LIMITED = "Rate limit exceeded"
SYNC_INTERVAL = 0.1  # seconds between syncs while limited keys are in use
IDLE_SYNC_INTERVAL = 1.0  # between syncs otherwise: this process still says it is alive
STALE_AFTER = 1.0  # seconds without a sync before each process decides on its own
_UNBOUNDED = math.inf


class Count:
    """What this process admitted in one window of one key.

    ``safe`` is a count up to which admitting needs no arithmetic: the weighted
    count only falls as the window goes on (the previous window weighs less and
    less), so what was below the limit stays below it until something new is
    learnt. A sync sets it to 0, and the next decision works it out again.
    """

    __slots__ = ("admitted", "end", "index", "safe", "start")

    def __init__(self, index: int, duration: int) -> None:
        self.index = index
        self.start = index * duration  # POSIX seconds
        self.end = self.start + duration
        self.admitted = 0
        self.safe = 0


@dataclass(slots=True, eq=False)
class Window:
    """One key's sliding window, as this process sees it."""

    policy: RateLimit
    count: Count
    previous: float = 0.0  # every process's count in the previous window
    others: float = 0.0  # other processes' count in this window, as of the last sync
    claimed: float = 0.0  # what the others may have reached by their next sync
    opening: float = 0.0  # the share this process took when the window began
    limit: float = 0.0  # what the weighted count must stay below: the policy's, or a share
    cap: float = _UNBOUNDED  # this process admits while count.admitted is below it
    synced: Count | None = field(default=None)  # the count the last sync published
    seen: float = 0.0  # when the last request was admitted: what its headers describe
    # The limit less every count but this process's, when the count was last found
    # safe: what remains is this less what this process admitted (a little less than
    # the truth as the previous window weighs less, until it is worked out again).
    unspent: int = 0
    policy_header: tuple[bytes, bytes] = (b"", b"")

    def __post_init__(self) -> None:
        self.limit = self.policy.limit
        self.policy_header = _policy_header(self.policy)

    def weighted(self, now: float) -> float:
        """The sliding-window count at ``now``, every process's as far as known."""
        count = self.count
        fraction = (now - count.start) / self.policy.duration
        return self.previous * (1.0 - fraction) + self.others + count.admitted

    def headers(self, retry_after: int | None = None) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers):
        the policy, and what remains after the last admitted request and in how many
        seconds the window ends; for a refusal, nothing remains until ``retry_after``."""
        if retry_after is not None:
            return [self.policy_header, (b"ratelimit", b'"key";r=0;t=%d' % retry_after)]
        count = self.count
        remaining = self.unspent - count.admitted
        reset = int(count.end - self.seen) + 1  # whole seconds, rounded up
        return [
            self.policy_header,
            (b"ratelimit", b'"key";r=%d;t=%d' % (remaining if remaining > 0 else 0, reset)),
        ]


def _policy_header(policy: RateLimit) -> tuple[bytes, bytes]:
    return b"ratelimit-policy", b'"key";q=%d;w=%d' % (policy.limit, policy.duration)


class Meter:
    """Per-key rate limits of one process, kept in step with the others by :meth:`sync`."""

    def __init__(
        self,
        counters: "Counters | None" = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counters = counters
        self._clock = clock
        self._windows: dict[int, Window] = {}
        self.process = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.refused = 0  # rate-limited refusals, for /metrics
        self.processes = 1  # live processes, as of the last sync
        self._rank = 0  # this process's place among them, for the remainder
        self._synced_at: float | None = None
        self._alone = False  # the counters have been out of reach for over STALE_AFTER
        self._lock = threading.Lock()  # one sync at a time

    @property
    def shared(self) -> bool:
        """Whether other processes share this one's limits (through counters)."""
        return self._counters is not None

    def close(self) -> None:
        if self._counters is not None:
            self._counters.close()

    # -- the hot path -------------------------------------------------------------

    def admit(self, key_id: int, policy: RateLimit) -> Window | None:
        """Count one request of ``key_id`` if its limit allows it: its window, or
        ``None`` when refused (:meth:`refusal` then says for how long)."""
        now = self._clock()
        window = self._windows.get(key_id)
        # The same policy is the same object until the key changes.
        if window is not None and window.policy is policy:
            count = window.count
            if count.admitted < count.safe and now < count.end:
                count.admitted += 1
                window.seen = now
                return window
        return self._admit(key_id, policy, now)

    def _admit(self, key_id: int, policy: RateLimit, now: float) -> Window | None:
        """:meth:`admit` when the count is not known to be safe: work it out."""
        window = self._windows.get(key_id)
        if window is None or window.policy != policy:
            window = self._open(key_id, policy, now)
        window.policy = policy
        count = window.count
        if now >= count.end:
            count = self._roll(window, now)
        duration = policy.duration
        weighted = window.previous * (1.0 - (now - count.start) / duration) + window.others
        window.unspent = math.floor(policy.limit - weighted)
        # Admitted while weighted + admitted < limit, and admitted < cap.
        headroom = min(window.limit - weighted - count.admitted, window.cap - count.admitted)
        if headroom <= 0:
            self.refused += 1
            return None
        count.safe = count.admitted + math.ceil(headroom) if headroom < _UNBOUNDED else 2**62
        count.admitted += 1
        window.seen = now
        return window

    def release(self, window: Window) -> None:
        """Take back the count of a request :meth:`admit` let through but that was
        refused after all (for want of credits): refused requests are not counted."""
        window.count.admitted -= 1

    def refusal(self, key_id: int) -> tuple[int, Window | None]:
        """Whole seconds (at least 1) until ``key_id`` may be admitted again, and its window."""
        window = self._windows.get(key_id)
        if window is None:
            return 1, None
        now, count = self._clock(), window.count
        if count.admitted >= window.cap:  # this process's share is spent until the next sync
            return 1, window
        wait = seconds_until_allowed(
            window.previous,
            window.others + count.admitted,
            window.limit,
            window.policy.duration,
            now - count.start,
        )
        return wait, window

    def _open(self, key_id: int, policy: RateLimit, now: float) -> Window:
        index = int(now // policy.duration)
        window = Window(policy, Count(index, policy.duration))
        if self._alone:
            window.limit = policy.limit / self.processes
        elif self.shared:
            window.cap = window.opening = self._share(window, now)
        self._windows[key_id] = window
        return window

    def _roll(self, window: Window, now: float) -> Count:
        old, duration = window.count, window.policy.duration
        index = int(now // duration)
        adjacent = index == old.index + 1
        # The others may have spent their claims since the last sync: count them in.
        window.previous = max(window.others, window.claimed) + old.admitted if adjacent else 0.0
        window.others = window.claimed = 0.0
        window.count = count = Count(index, duration)
        if self.shared and not self._alone:
            window.cap = window.opening = self._share(window, now)
        return count

    # -- in step with the other processes -----------------------------------------

    def sync(self) -> None:
        """Publish this process's counts and take in every process's (a background task)."""
        if self._counters is None:
            return
        with self._lock:
            now = self._clock()
            synced_at = self._synced_at
            if not self._windows and synced_at is not None and now - synced_at < IDLE_SYNC_INTERVAL:
                return  # nothing to tell but that this process is alive
            windows = list(self._windows.items())
            published: dict[Slot, tuple[int, int]] = {}
            wanted: list[Slot] = []
            seen: list[tuple[int, Window, Count]] = []
            for key_id, window in windows:
                count, duration = window.count, window.policy.duration
                if now - count.start >= 3 * duration and window.synced is count:
                    del self._windows[key_id]  # idle: nothing left to tell or to know
                    continue
                previous = window.synced
                if previous is not None and previous is not count:
                    published[key_id, duration, previous.index] = (previous.admitted,) * 2
                # The claim goes out with the count, so that processes syncing after
                # this one see it at once; the share taken below never exceeds it.
                admitted = count.admitted
                claim = admitted + self._share(window, now)
                published[key_id, duration, count.index] = (admitted, claim)
                wanted += [(key_id, duration, count.index), (key_id, duration, count.index - 1)]
                seen.append((key_id, window, count))
            try:
                totals, members = self._counters.exchange(self.process, published, wanted)
            except Exception:
                self._go_alone(now)
                raise
            self._synced_at, self._alone = now, False
            self.processes = max(1, len(members))
            self._rank = members.index(self.process) if self.process in members else 0
            for key_id, window, count in seen:
                if window.count is not count:  # rolled over meanwhile: the next sync catches up
                    continue
                duration = window.policy.duration
                window.synced = count
                window.previous = totals.get((key_id, duration, count.index - 1), (0, 0, 0))[0]
                mine, claim = published[key_id, duration, count.index]
                admitted, claimed, publishers = totals.get(
                    (key_id, duration, count.index), (0, 0, 0)
                )
                window.others = max(0, admitted - mine)
                # A live process that has not published here yet may hold a share as
                # large as this one's: it took it when its window began, as this one did.
                silent = max(0, self.processes - max(publishers, 1))
                window.claimed = max(0, claimed - claim) + silent * window.opening
                window.limit = window.policy.limit
                window.cap = min(claim, mine + self._share(window, now))
                count.safe = 0  # what was safe may not be now

    def _share(self, window: Window, now: float) -> int:
        """How many more requests this process may admit until its next sync, when the
        others may spend up to what they claimed at their last sync."""
        unspent = max(0.0, window.claimed - window.others)
        left = math.floor(window.policy.limit - window.weighted(now) - unspent)
        if left <= 0:
            return 0
        processes = self.processes
        # The remainder goes to processes in turn, one turn per sync interval, so
        # that the shares add up to what is left, never more.
        turn = int(now / SYNC_INTERVAL)
        extra = 1 if (self._rank + turn) % processes < left % processes else 0
        return left // processes + extra

    def _go_alone(self, now: float) -> None:
        """The counters are out of reach: once that lasts, decide on local counts
        against this process's share of each limit."""
        if self._alone or (self._synced_at is not None and now - self._synced_at <= STALE_AFTER):
            return
        self._alone = True
        for window in list(self._windows.values()):
            window.previous /= self.processes  # about this process's part of it
            window.others = 0.0
            window.limit = window.policy.limit / self.processes
            window.cap = _UNBOUNDED
            window.count.safe = 0
