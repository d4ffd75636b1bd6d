"""The meter in-process: the sliding window's rule, and meters sharing counters.

Several :class:`Meter` objects over one :class:`MemoryCounters` stand for the
processes of a deployment, on a clock of the test's own; the real processes are
in ``tests/test_ratelimit_scale.py``.
"""

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from keyguard.domain.ratelimit import RateLimit, seconds_until_allowed, weighted_count
from keyguard.metering import SYNC_INTERVAL, Meter
from keyguard.storage.counters import MemoryCounters, Slot, Sums

START = 1_000_800.0  # a window boundary for every duration used here (60 x 16,680)


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


def admitted(meter: Meter, policy: RateLimit, requests: int, key_id: int = 1) -> int:
    return sum(meter.admit(key_id, policy) is not None for _ in range(requests))


# -- one process ----------------------------------------------------------------------


def test_one_process_admits_exactly_the_limit_in_a_window() -> None:
    clock = Clock()
    meter = Meter(clock=clock)
    policy = RateLimit(5, 10)

    assert admitted(meter, policy, 8) == 5
    clock.now += 9.9
    assert admitted(meter, policy, 1) == 0
    assert meter.refused == 4


def test_the_previous_window_weighs_what_is_left_of_it() -> None:
    clock = Clock()
    meter = Meter(clock=clock)
    policy = RateLimit(10, 10)
    assert admitted(meter, policy, 10) == 10

    clock.now = START + 10 + 2.5  # a quarter into the next window: 10 x 0.75 = 7.5 counted
    first = admitted(meter, policy, 5)
    clock.now = START + 10 + 5  # halfway: 5 counted, and the 3 admitted since
    second = admitted(meter, policy, 5)

    assert (first, second) == (3, 2)


def test_a_window_with_nothing_before_it_starts_afresh() -> None:
    clock = Clock()
    meter = Meter(clock=clock)
    policy = RateLimit(3, 1)
    assert admitted(meter, policy, 3) == 3

    clock.now += 5  # several windows later

    assert admitted(meter, policy, 5) == 3


def test_retry_after_is_when_the_weighted_count_falls_below_the_limit() -> None:
    clock = Clock()
    meter = Meter(clock=clock)
    policy = RateLimit(10, 60)
    admitted(meter, policy, 11)
    wait, window = meter.refusal(1)

    assert window is not None
    assert wait == 61  # the next window: 10 x (1 - f) < 10 once f > 0
    clock.now = START + 60
    assert meter.admit(1, policy) is None
    clock.now = START + wait
    assert meter.admit(1, policy) is not None


def test_rule_of_the_window() -> None:
    assert weighted_count(10, 3, 0.25) == 10.5
    assert seconds_until_allowed(10, 5, 10, 60, 0) == 31  # 10 x (1 - f) < 5 past f = 0.5
    assert seconds_until_allowed(0, 10, 10, 60, 15) == 46
    assert seconds_until_allowed(0, 20, 10, 60, 0) == 91  # then 20 x (1 - f) < 10


def test_a_changed_limit_starts_a_new_count() -> None:
    meter = Meter(clock=Clock())
    assert admitted(meter, RateLimit(2, 60), 3) == 2

    assert admitted(meter, RateLimit(4, 60), 5) == 4


# -- several processes ------------------------------------------------------------------


@dataclass
class Run:
    accepted: list[float] = field(default_factory=list)
    refused: int = 0

    def most_in_any_window(self, duration: float) -> int:
        best, first = 0, 0
        for last, moment in enumerate(self.accepted):
            while self.accepted[first] <= moment - duration:
                first += 1
            best = max(best, last - first + 1)
        return best


def spread(
    policy: RateLimit, rate: float, seconds: float, processes: int = 4, seed: int = 1
) -> Run:
    """``rate`` requests per second spread evenly over ``processes`` meters, each
    syncing every 100 ms, a quarter interval apart."""
    clock = Clock()
    counters = MemoryCounters(clock)
    meters = [Meter(counters, clock) for _ in range(processes)]
    for _ in range(2):  # two heartbeats apart: every meter knows the others
        for meter in meters:
            meter.sync()
        clock.now += 1.5
    clock.now = START
    syncs = [START + SYNC_INTERVAL * (index + 1) / processes for index in range(processes)]
    chooser, moment, run = random.Random(seed), START, Run()
    for request in range(int(rate * seconds)):
        for index, meter in enumerate(meters):
            while syncs[index] <= moment:
                clock.now = syncs[index]
                meter.sync()
                syncs[index] += SYNC_INTERVAL
        clock.now = moment
        if meters[request % processes].admit(1, policy) is not None:
            run.accepted.append(moment)
        else:
            run.refused += 1
        moment += chooser.uniform(0.5, 1.5) / rate
    return run


@pytest.mark.parametrize(
    ("limit", "duration", "rate"),
    [(100, 1, 200), (100, 2, 1_000), (1_000, 1, 4_000), (100, 10, 100)],
    ids=["2x", "10x", "4x-large", "10x-long"],
)
def test_four_processes_over_the_limit_stay_within_it_and_a_tenth(
    limit: int, duration: int, rate: float
) -> None:
    run = spread(RateLimit(limit, duration), rate, seconds=6 * duration)

    assert run.most_in_any_window(duration) <= limit * 1.1 + 1


@pytest.mark.parametrize(("limit", "duration"), [(100, 1), (600, 60)])
def test_four_processes_under_the_limit_are_seldom_refused(limit: int, duration: int) -> None:
    rate = 0.8 * limit / duration
    run = spread(RateLimit(limit, duration), rate, seconds=min(30, 4 * duration))

    assert run.refused <= 0.05 * (run.refused + len(run.accepted))


class Unreachable:
    """Counters whose server is down."""

    def exchange(
        self,
        process: str,  # noqa: ARG002
        published: Mapping[Slot, tuple[int, int]],  # noqa: ARG002
        wanted: Sequence[Slot],  # noqa: ARG002
    ) -> tuple[dict[Slot, Sums], list[str]]:
        raise ConnectionError("connection refused")

    def close(self) -> None:
        pass


def test_without_its_counters_a_process_decides_alone_on_its_share() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    meters = [Meter(counters, clock) for _ in range(4)]
    for _ in range(2):  # two heartbeats apart: every meter knows the others
        for meter in meters:
            meter.sync()
        clock.now += 1.5
    meter = meters[0]
    meter._counters = Unreachable()
    policy = RateLimit(100, 60)

    before = admitted(meter, policy, 10)  # decided without waiting on anything
    clock.now += 2
    with pytest.raises(ConnectionError):
        meter.sync()  # the background task logs this and tries again
    after = admitted(meter, policy, 100)

    assert before == 10
    assert before + after == 25  # its quarter of the limit
