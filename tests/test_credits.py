"""Usage credits in-process: leases taken from each store, on a clock of the test's own.

Several :class:`CreditLeases` over one store stand for the processes of a
deployment; the real processes are in ``tests/test_credits_scale.py``.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyguard.cache import CachedKey, KeyCache
from keyguard.credits import IDLE_RETURN, LEASE_INTERVAL, MAX_LEASE, CreditLeases
from keyguard.domain.credits import Refill, period_end, period_of
from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import KeySettings
from keyguard.storage import Store, open_store
from tests.conftest import BACKENDS, database


@pytest.fixture(params=["memory", *BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with database(request.param, tmp_path) as url:
        backend = open_store(url)
        backend.migrate()
        yield backend
        backend.close()


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Process:
    """One serving process: its snapshot and its leases."""

    cache: KeyCache
    leases: CreditLeases

    def key(self, key_id: int) -> CachedKey:
        key = self.cache.by_id(key_id)
        assert key is not None
        return key

    def spend(self, key_id: int, requests: int = 1) -> int:
        key = self.key(key_id)
        return sum(self.leases.spend(key.key_id, key.profile) for _ in range(requests))


def process(store: Store, clock: Clock, *, inline: bool = False) -> Process:
    cache = KeyCache(store)
    cache.refresh()
    return Process(cache, CreditLeases(store, cache, clock, inline=inline))


def metered(store: Store, remaining: int, refill: Refill | None = None) -> tuple[int, int]:
    settings = KeySettings(label="first")
    account, _ = store.create_account("acme", b"\x01" * 32, b"s", settings)
    metered = replace(settings, label="metered", remaining=remaining, refill=refill)
    return account.id, store.create_key(account.id, b"\x02" * 32, b"s", metered).id


def remaining(store: Store, account_id: int, key_id: int) -> int | None:
    key = store.get_key(account_id, key_id)
    assert key is not None
    return key.settings.remaining


def drain(processes: list[Process], key_id: int, clock: Clock, seed: int = 7) -> int:
    """Requests spread at random over ``processes``, a leasing round every few of them,
    until every process has been refused for two seconds; how many were allowed."""
    chooser = random.Random(seed)
    allowed, refused_since = 0, None
    while refused_since is None or clock.now - refused_since < 2.0:
        for _ in range(5):
            if chooser.choice(processes).spend(key_id):
                allowed, refused_since = allowed + 1, None
            elif refused_since is None:
                refused_since = clock.now
        clock.now += LEASE_INTERVAL / 4
        for each in processes:
            each.leases.sync()
    return allowed


NOW = datetime.now(UTC).timestamp()


def test_a_process_holds_one_credit_of_each_key_after_its_first_round(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 10)
    one = process(store, clock)

    one.leases.sync()

    assert one.leases.held() == 1
    assert remaining(store, account_id, key_id) == 9
    assert one.spend(key_id, 2) == 1  # the second waits for the next round


def test_one_process_spends_exactly_the_credits(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 250)

    allowed = drain([process(store, clock)], key_id, clock)

    assert allowed == 250
    assert remaining(store, account_id, key_id) == 0


def test_on_memory_credits_are_exact_without_waiting_for_a_round() -> None:
    store, clock = open_store("memory://"), Clock(NOW)
    account_id, key_id = metered(store, 37)
    one = process(store, clock, inline=True)

    assert one.spend(key_id, 50) == 37
    assert one.leases.refused == 13
    assert remaining(store, account_id, key_id) == 0


def test_several_processes_never_spend_more_than_the_credits(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 1000)
    processes = [process(store, clock) for _ in range(4)]

    allowed = drain(processes, key_id, clock)

    assert allowed == 1000  # the load reached every process until all was spent
    assert remaining(store, account_id, key_id) == 0


def test_a_spread_load_leaves_at_most_a_lease_per_process_unspent(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 1000)
    processes = [process(store, clock) for _ in range(4)]
    chooser = random.Random(3)

    allowed = 0
    for _ in range(300):  # 1500 requests, then the load stops
        allowed += sum(chooser.choice(processes).spend(key_id) for _ in range(5))
        clock.now += LEASE_INTERVAL / 2
        for each in processes:
            each.leases.sync()
    held = sum(each.leases.held() for each in processes)

    assert 1000 - len(processes) * MAX_LEASE <= allowed <= 1000
    assert allowed + held + (remaining(store, account_id, key_id) or 0) == 1000


def test_an_idle_lease_is_given_back_but_one_credit(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 500)
    one = process(store, clock)
    for _ in range(20):  # a load that grows the lease
        one.spend(key_id, 20)
        clock.now += LEASE_INTERVAL
        one.leases.sync()
    spent = 500 - (remaining(store, account_id, key_id) or 0) - one.leases.held()
    assert one.leases.held() > 1

    for _ in range(int(IDLE_RETURN / LEASE_INTERVAL) + 2):
        clock.now += LEASE_INTERVAL
        one.leases.sync()

    assert one.leases.held() == 1
    assert remaining(store, account_id, key_id) == 500 - spent - 1


def test_a_graceful_stop_gives_every_credit_back(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 100)
    one = process(store, clock)
    one.leases.sync()
    one.spend(key_id, 3)
    clock.now += LEASE_INTERVAL
    one.leases.sync()

    one.leases.stop()

    assert one.leases.held() == 0
    assert remaining(store, account_id, key_id) == 100 - 1


def test_a_change_of_credits_drops_the_lease_and_starts_afresh(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 100)
    one = process(store, clock)
    for _ in range(5):
        one.spend(key_id, 10)
        clock.now += LEASE_INTERVAL
        one.leases.sync()
    assert one.leases.held() > 1

    changed = store.update_key(account_id, key_id, KeyChanges(remaining=3))
    assert changed is not None
    one.cache.put(changed)

    assert one.spend(key_id) == 0  # the old lease is gone at once
    assert drain([one], key_id, clock) == 3
    assert remaining(store, account_id, key_id) == 0


def test_credits_are_refilled_at_the_start_of_the_next_day(store: Store) -> None:
    clock = Clock(NOW)
    account_id, key_id = metered(store, 2, Refill(5, "daily"))
    one = process(store, clock)
    assert drain([one], key_id, clock) == 2

    today = period_of("daily", datetime.fromtimestamp(NOW, UTC))
    clock.now = period_end("daily", today)  # midnight UTC
    one.leases.sync()

    assert drain([one], key_id, clock) == 5
    assert remaining(store, account_id, key_id) == 0


def test_a_lease_of_the_day_before_is_not_spent_after_midnight(store: Store) -> None:
    clock = Clock(NOW)
    _, key_id = metered(store, 50, Refill(1, "daily"))
    one = process(store, clock)
    one.leases.sync()
    assert one.leases.held() == 1

    clock.now = period_end("daily", period_of("daily", datetime.fromtimestamp(NOW, UTC)))

    assert one.spend(key_id) == 0
    one.leases.sync()
    assert one.spend(key_id, 3) == 1  # the new day's one credit
