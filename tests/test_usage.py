import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain, repeat

import pytest

from keyguard.domain.counts import Granularity, Outcome
from keyguard.domain.records import KeySettings
from keyguard.periodic import Periodic
from keyguard.storage import open_store
from keyguard.usage import UsageRecorder

NOW = 1_780_000_000.0


class FailingStore:
    """A store whose writes fail, standing in for a database that went away."""

    def __init__(self) -> None:
        self.attempts = 0

    def record_usage(self, used: Mapping[int, datetime], settle: float = 0.0) -> None:  # noqa: ARG002
        self.attempts += 1
        raise ConnectionError("database is gone")

    def record_counts(self, counts: Mapping[int, Sequence[int]], at: datetime) -> None:  # noqa: ARG002
        raise ConnectionError("database is gone")


def test_uses_are_coalesced_into_one_write_per_key() -> None:
    store = open_store("memory://")
    account, key = store.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    clock = chain([NOW, NOW + 1, NOW + 2], repeat(NOW + 2))
    usage = UsageRecorder(store, clock=lambda: next(clock))
    for _ in range(3):
        usage.touch(key.id, account.id)
    assert usage.backlog == 1
    assert usage.flush() == 1
    stored = store.get_key(account.id, key.id)
    assert stored is not None
    assert stored.last_used_at == datetime.fromtimestamp(NOW + 2, UTC)
    assert usage.flush() == 0


def test_unflushed_use_is_visible_in_this_process() -> None:
    usage = UsageRecorder(open_store("memory://"), clock=lambda: NOW)
    assert usage.latest(7) is None
    usage.touch(7, 1)
    assert usage.latest(7) == datetime.fromtimestamp(NOW, UTC)


def test_a_flushed_use_is_still_answered_until_the_next_flush() -> None:
    """A management answer may read its key from a transaction older than the flush."""
    store = open_store("memory://")
    account, key = store.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    clock = chain([NOW, NOW + 5], repeat(NOW + 5))
    usage = UsageRecorder(store, clock=lambda: next(clock))
    usage.touch(key.id, account.id)

    assert usage.flush() == 1
    assert usage.latest(key.id) == datetime.fromtimestamp(NOW, UTC)
    assert usage.flush() == 0
    assert usage.latest(key.id) == datetime.fromtimestamp(NOW, UTC)
    usage.touch(key.id, account.id)
    assert usage.flush() == 1
    assert usage.latest(key.id) == datetime.fromtimestamp(NOW + 5, UTC)


def test_failed_flush_keeps_the_uses_for_the_next_one() -> None:
    failing = FailingStore()
    usage = UsageRecorder(failing, clock=lambda: NOW)  # type: ignore[arg-type]
    usage.touch(7, 1)
    with pytest.raises(ConnectionError):
        usage.flush()
    assert usage.backlog == 1
    assert usage.latest(7) == datetime.fromtimestamp(NOW, UTC)


def test_counts_of_each_outcome_are_written_at_the_flush_and_kept_when_it_fails() -> None:
    store = open_store("memory://")
    account, key = store.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    down = threading.Event()
    down.set()

    class Outage:
        """The store, unreachable while ``down`` is set."""

        def __getattr__(self, name: str) -> object:
            if down.is_set():
                raise ConnectionError("database is gone")
            return getattr(store, name)

    usage = UsageRecorder(Outage(), clock=lambda: NOW)  # type: ignore[arg-type]
    usage.touch(key.id, account.id)
    usage.count(key.id, account.id, Outcome.FORBIDDEN)
    with pytest.raises(ConnectionError):
        usage.flush()
    usage.count(key.id, account.id, Outcome.FORBIDDEN)

    down.clear()
    usage.flush()

    minute = Granularity.MINUTE.floor(datetime.fromtimestamp(NOW, UTC))
    since, until = minute, minute + Granularity.MINUTE.step
    assert store.usage_series(account.id, key.id, Granularity.MINUTE, since, until) == {
        minute: (1, 0, 2, 0, 0)
    }


def test_periodic_runs_at_each_interval_until_stopped() -> None:
    ticks = threading.Semaphore(0)
    calls: list[str] = []

    def action() -> None:
        calls.append(threading.current_thread().name)
        ticks.release()

    task = Periodic("test", action, 0.01)
    task.start()
    assert all(ticks.acquire(timeout=2) for _ in range(3))
    task.stop()
    stopped_at = len(calls)
    threading.Event().wait(0.1)  # ten intervals
    assert len(calls) == stopped_at
    assert set(calls) == {"keyguard-test"}


@pytest.mark.parametrize(("run_on_stop", "expected"), [(True, ["stop"]), (False, [])])
def test_periodic_runs_once_more_on_stop_when_asked(run_on_stop: bool, expected: list[str]) -> None:
    calls: list[str] = []
    task = Periodic("test", lambda: calls.append("stop"), 3600, run_on_stop=run_on_stop)
    task.start()
    task.stop()  # long before the first tick
    assert calls == expected


def test_periodic_survives_a_failing_action(caplog: pytest.LogCaptureFixture) -> None:
    attempts = threading.Semaphore(0)

    def action() -> None:
        attempts.release()
        raise ConnectionError("secret-looking detail")

    task = Periodic("flaky", action, 0.01)
    task.start()
    assert attempts.acquire(timeout=2)
    assert attempts.acquire(timeout=2)
    task.stop()
    assert "flaky failed, will retry: ConnectionError" in caplog.text
    assert "secret-looking detail" not in caplog.text
