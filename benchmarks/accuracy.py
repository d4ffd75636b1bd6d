"""How exactly a rate limit holds across processes: a paced load spread evenly
over connections pinned to different workers, and what it was answered.

Each connection gets an equal part of the rate on a thread of its own, on an
absolute schedule (a late request is sent at once, the next one keeps its
time), so the load stays even however the answers come. The load starts just
after a window boundary, as windows are cut from the epoch. Shared by
``tests/test_ratelimit_scale.py`` and the ``ratelimit`` benchmark.
"""

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

FORWARD = "/auth/forward"
# Sends one forward-auth request with these headers over one pinned connection: its status.
Sender = Callable[[Mapping[str, str]], int]


@dataclass(frozen=True, slots=True)
class Accuracy:
    """What a load of ``rate`` requests per second for ``seconds`` was answered."""

    limit: int
    duration: int
    rate: float
    seconds: float
    accepted: tuple[float, ...]  # when each allowed request was sent
    refused: int
    failed: int  # answers other than 200 and 429

    @property
    def sent(self) -> int:
        return len(self.accepted) + self.refused + self.failed

    @property
    def bound(self) -> float:
        """The most a window may accept across processes: limit x 1.1 + 1."""
        return self.limit * 1.1 + 1

    @property
    def most_in_any_window(self) -> int:
        """The most requests accepted in any ``duration`` seconds (sliding)."""
        best, first, times = 0, 0, self.accepted
        for last, moment in enumerate(times):
            while times[first] <= moment - self.duration:
                first += 1
            best = max(best, last - first + 1)
        return best

    @property
    def refused_share(self) -> float:
        return self.refused / self.sent if self.sent else 0.0


def forward_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Original-Method": "GET", "X-Original-URI": "/"}


def next_boundary(duration: int, after: float = 0.05) -> float:
    """The start of the next window of ``duration`` seconds, plus ``after``."""
    now = time.time()
    return (now // duration + 1) * duration + after


def spread_load(
    senders: Sequence[Sender],
    headers: Mapping[str, str],
    limit: int,
    duration: int,
    rate: float,
    seconds: float,
) -> Accuracy:
    """Send ``rate`` forward-auth requests per second, evenly over ``senders``."""
    start = next_boundary(duration)
    each = rate / len(senders)
    lock = threading.Lock()
    accepted: list[float] = []
    counts = {"refused": 0, "failed": 0}

    def drive(offset: int, send: Sender) -> None:
        due = start + offset / rate  # the clients take turns, 1 / rate apart
        mine: list[float] = []
        refused = failed = 0
        while due < start + seconds:
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            status = send(headers)
            if status == 200:
                mine.append(sent)
            elif status == 429:
                refused += 1
            else:
                failed += 1
            due += 1 / each
        with lock:
            accepted.extend(mine)
            counts["refused"] += refused
            counts["failed"] += failed

    with ThreadPoolExecutor(len(senders)) as pool:
        for done in [pool.submit(drive, index, send) for index, send in enumerate(senders)]:
            done.result()
    return Accuracy(
        limit,
        duration,
        rate,
        seconds,
        tuple(sorted(accepted)),
        counts["refused"],
        counts["failed"],
    )
