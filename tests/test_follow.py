"""Changes reach other processes' snapshots: pushed by LISTEN/NOTIFY, caught up by polling.

Each half is tested without the other, so that neither can hide the other's failure:
a follower with no polling must see every change by its notification alone (on
PostgreSQL, and on the in-memory twin of its signal), and a runtime whose
notifications never come must still see it within the poll interval.
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import psycopg
import pytest

from keyguard.cache import ChangeFollower, KeyCache, Snapshot
from keyguard.config import Settings
from keyguard.domain.records import KeySettings
from keyguard.runtime import Keyguard
from keyguard.storage import Store, open_store
from keyguard.storage.memory import MemoryStore
from tests.conftest import POSTGRES_URL_VARIABLE, TEST_SECRET, missing
from tests.postgres import postgres_database

NOTIFIED_WITHIN = 5.0  # generous: without a notification it would never arrive


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated database of the test's own: in a schema of a shared one, other
    tests' writes would notify the follower too, and hide a notification it lost."""
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to test LISTEN/NOTIFY")
    with postgres_database(server) as url:
        migrated = open_store(url)
        migrated.migrate()
        migrated.close()
        yield url


@pytest.fixture
def writer(postgres_url: str) -> Iterator[Store]:
    """Another process's store, on the same database."""
    store = open_store(postgres_url)
    yield store
    store.close()


@contextmanager
def following(store: Store) -> Iterator[KeyCache]:
    """A snapshot of ``store`` kept current by a :class:`ChangeFollower` alone: no polling."""
    signal = store.change_signal()
    assert signal is not None
    cache = KeyCache(store)
    cache.refresh()
    follower = ChangeFollower(cache, signal)
    follower.start()
    try:
        yield cache
    finally:
        follower.stop()


@pytest.fixture
def follower_cache(postgres_url: str) -> Iterator[KeyCache]:
    store = open_store(postgres_url)
    with following(store) as cache:
        yield cache
    store.close()


@pytest.fixture(params=["memory", "postgresql"])
def followed(request: pytest.FixtureRequest) -> Iterator[tuple[KeyCache, Store]]:
    """A snapshot kept current by a follower alone, and the store to change: in memory
    the store the snapshot reads, on PostgreSQL another one, as another process's."""
    if request.param == "memory":
        store = MemoryStore()
        with following(store) as cache:
            yield cache, store
        return
    url: str = request.getfixturevalue("postgres_url")
    reader, writer = open_store(url), open_store(url)
    with following(reader) as cache:
        yield cache, writer
    reader.close()
    writer.close()


def eventually(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition`` held; fails if it did not within ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.01)
    return time.monotonic() - started


def cached(cache: Snapshot, digest: bytes) -> bool:
    return cache.get(digest) is not None


def test_follower_applies_every_change_by_its_signal_alone(
    followed: tuple[KeyCache, Store],
) -> None:
    cache, writer = followed
    for number in range(1, 4):  # a follower that stopped after one change fails the next
        digest = bytes([number]) * 32
        writer.create_account(f"account {number}", digest, b"s", KeySettings(label="k"))

        eventually(partial(cached, cache, digest), NOTIFIED_WITHIN)


def test_follower_catches_up_after_its_listening_connection_is_dropped(
    follower_cache: KeyCache, writer: Store, postgres_url: str
) -> None:
    application = postgres_url.rpartition("application_name=")[2]
    conninfo = os.environ[POSTGRES_URL_VARIABLE].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as admin:

        def drop_listener() -> bool:
            dropped = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                (application,),
            ).fetchall()
            return dropped == [(True,)]

        eventually(drop_listener, NOTIFIED_WITHIN)  # once the follower has connected

    writer.create_account("acme", b"d" * 32, b"s", KeySettings(label="k"))
    eventually(lambda: follower_cache.get(b"d" * 32) is not None, NOTIFIED_WITHIN)

    writer.create_account("globex", b"e" * 32, b"s", KeySettings(label="k"))  # listening again
    eventually(lambda: follower_cache.get(b"e" * 32) is not None, NOTIFIED_WITHIN)


def test_a_memory_signal_wakes_for_a_change_made_while_no_one_waited() -> None:
    store = MemoryStore()
    signal = store.change_signal()
    store.create_account("acme", b"m" * 32, b"s", KeySettings(label="k"))

    assert signal.wait(timeout=0) is True
    assert signal.wait(timeout=0.05) is False  # that change is told once


def test_a_memory_signal_wakes_a_waiter_when_another_thread_writes() -> None:
    store = MemoryStore()
    signal = store.change_signal()
    write = partial(store.create_account, "acme", b"m" * 32, b"s", KeySettings(label="k"))
    writing = threading.Timer(0.05, write)
    writing.start()
    started = time.monotonic()

    woken = signal.wait(timeout=NOTIFIED_WITHIN)

    writing.join()
    assert woken is True
    assert time.monotonic() - started < NOTIFIED_WITHIN / 2


class Silent:
    """A change signal whose notifications are all lost."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        self._closed.wait(timeout)
        return False

    def close(self) -> None:
        self._closed.set()


def test_with_every_notification_lost_a_change_arrives_within_the_poll_interval(
    postgres_url: str, writer: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.25
    settings = Settings(
        database_url=postgres_url, secret_key=TEST_SECRET, refresh_interval=interval
    )
    runtime = Keyguard(settings)
    monkeypatch.setattr(runtime.store, "change_signal", Silent)
    runtime.start()
    try:
        lags = []
        for number in range(5):
            digest = bytes([number]) * 32
            writer.create_account(f"account {number}", digest, b"s", KeySettings(label="k"))
            lags.append(eventually(partial(cached, runtime.cache, digest), 1.0))
    finally:
        runtime.stop()
    refresh = 0.1  # one read of the change feed, on a busy machine
    assert max(lags) <= interval + refresh, lags
