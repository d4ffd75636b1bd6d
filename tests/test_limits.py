"""The fixed-window limiter behind the abuse limits, on a test clock."""

from keyguard.limits import WindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_events_up_to_the_limit_pass_and_the_next_one_waits_for_the_window_end() -> None:
    clock = Clock()
    limiter = WindowLimiter(limit=2, window=60, clock=clock)
    assert [limiter.hit("a"), limiter.hit("a")] == [None, None]
    clock.now += 10
    assert limiter.hit("a") == 50
    assert limiter.retry_after("a") == 50
    clock.now += 49.5
    assert limiter.retry_after("a") == 1


def test_when_the_window_ends_the_key_is_unblocked_and_counts_from_zero() -> None:
    clock = Clock()
    limiter = WindowLimiter(limit=1, window=60, clock=clock)
    limiter.hit("a")
    assert limiter.hit("a") == 60
    clock.now += 60
    assert limiter.retry_after("a") is None
    assert "a" not in limiter.blocked
    assert limiter.hit("a") is None
    assert limiter.hit("a") == 60


def test_keys_are_counted_apart() -> None:
    limiter = WindowLimiter(limit=1, clock=Clock())
    limiter.hit("a")
    assert limiter.hit("a") is not None
    assert limiter.hit("b") is None
    assert limiter.retry_after("b") is None


def test_a_flood_of_distinct_keys_cannot_grow_memory_past_the_bound() -> None:
    limiter = WindowLimiter(limit=1, clock=Clock(), max_tracked=100)
    for number in range(1000):
        limiter.hit(number)
        limiter.hit(number)
    assert len(limiter._counts) <= 100
    assert len(limiter.blocked) <= 100
