"""Changes reach other processes' snapshots: pushed by LISTEN/NOTIFY, caught up by polling.

Each half is tested without the other, so that neither can hide the other's failure:
a follower with no polling must see a change by its notification alone, and a
runtime whose notifications never come must still see it within the poll interval.
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import psycopg
import pytest

from keyguard.cache import ChangeFollower, KeyCache
from keyguard.config import Settings
from keyguard.domain.records import KeySettings
from keyguard.runtime import Keyguard
from keyguard.storage import Store, open_store
from tests.conftest import POSTGRES_URL_VARIABLE, TEST_SECRET, missing
from tests.postgres import postgres_schema

NOTIFIED_WITHIN = 5.0  # generous: without a notification it would never arrive


@pytest.fixture
def postgres_url() -> Iterator[str]:
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to test LISTEN/NOTIFY")
    with postgres_schema(server) as url:
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


@pytest.fixture
def follower_cache(postgres_url: str) -> Iterator[KeyCache]:
    """A snapshot kept current by a :class:`ChangeFollower` alone: no polling."""
    store = open_store(postgres_url)
    signal = store.change_signal()
    assert signal is not None
    cache = KeyCache(store)
    cache.refresh()
    follower = ChangeFollower(cache, signal)
    follower.start()
    yield cache
    follower.stop()
    store.close()


def eventually(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition`` held; fails if it did not within ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_follower_sees_a_change_by_its_notification_alone(
    follower_cache: KeyCache, writer: Store
) -> None:
    writer.create_account("acme", b"n" * 32, b"s", KeySettings(label="k"))

    eventually(lambda: follower_cache.get(b"n" * 32) is not None, NOTIFIED_WITHIN)


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


def cached(cache: KeyCache, digest: bytes) -> bool:
    return cache.get(digest) is not None


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
