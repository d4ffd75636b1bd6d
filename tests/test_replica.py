"""keyguard following a PostgreSQL streaming replica (KEYGUARD_DATABASE_READ_URL).

The tests of :class:`ReplicaLag` run in-process on a fake clock. The others run
a throwaway primary and a standby made from it by ``pg_basebackup -R``
(``tests/postgres.py``), so they can pause the standby's replay, or stop it,
under a running ``keyguard serve``.
"""

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from keyguard import runtime
from keyguard.cache import KeyCache
from keyguard.domain.keys import generate
from keyguard.domain.records import KeySettings
from keyguard.errors import ConfigurationError, StorageUnavailable
from keyguard.replica import MAX_PENDING, ReplicaLag
from keyguard.runtime import Keyguard
from keyguard.storage.memory import MemoryStore
from tests.conftest import database, missing, settings_for
from tests.postgres import (
    ClusterError,
    PostgresCluster,
    pause_replay,
    replayed,
    server_binaries,
)
from tests.server import KeyguardServer, Servers, create_key, free_port
from tests.test_faults import forward, gauges, health, wait_for

REFRESH_INTERVAL = 0.25  # keyguard's default: how often the replica is polled
# A local replica replays within milliseconds: lag plus one poll, with room for a busy machine.
BOUND = 1.0
LAGGING = 2.0  # seconds a paused replica is watched lagging
PROBE = ("POST", "/v3/messages")


# -- the lag, on a fake clock -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lag_of(store: MemoryStore) -> tuple[ReplicaLag, KeyCache, Clock, Callable[[], None]]:
    """A lag measured on ``store`` as the primary, for a snapshot fed by ``store`` too."""
    digests = (number.to_bytes(32, "big") for number in itertools.count(1))
    account, _key = store.create_account("acme", next(digests), b"s", KeySettings(label="k"))
    clock = Clock()
    cache = KeyCache(store)
    cache.refresh()

    def write() -> None:
        store.create_key(account.id, next(digests), b"s", KeySettings(label="k"))

    return ReplicaLag(store, cache, clock), cache, clock, write


def test_an_idle_primary_is_no_lag_however_long_it_stays_idle() -> None:
    lag, _cache, clock, _write = lag_of(MemoryStore())
    for _ in range(3):
        lag.sample()
        clock.now += 60
    assert (lag.seconds, lag.behind) == (0.0, 0)


def test_lag_runs_from_the_first_sample_that_saw_a_change_until_the_snapshot_reads_it() -> None:
    lag, cache, clock, write = lag_of(MemoryStore())
    write()
    lag.sample()
    clock.now += 1.5
    write()
    lag.sample()  # a newer revision: the lag still runs from the first one missing
    clock.now += 1.0
    assert (lag.seconds, lag.behind) == (2.5, 2)
    cache.refresh()
    assert (lag.seconds, lag.behind) == (0.0, 0)


def test_with_more_changes_than_it_remembers_the_lag_is_overstated_never_understated() -> None:
    lag, cache, clock, write = lag_of(MemoryStore())
    for _ in range(MAX_PENDING + 5):
        write()
        lag.sample()
        clock.now += 1.0
    assert lag.seconds == MAX_PENDING + 5
    # Pretend the snapshot reached all but the last write: the oldest missing one was
    # first seen a second ago, but the merged entry remembers an earlier time.
    cache.revision = lag.primary_revision - 1
    assert lag.seconds >= 1.0
    cache.refresh()
    assert lag.seconds == 0.0


def test_an_unreachable_primary_is_reported_and_raised() -> None:
    store = MemoryStore()
    lag, _cache, _clock, _write = lag_of(store)
    lag.sample()
    assert lag.primary_reachable

    def unreachable() -> int:
        raise ConnectionError

    store.newest_revision = unreachable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        lag.sample()
    assert not lag.primary_reachable


# -- start-up ----------------------------------------------------------------


@pytest.fixture
def primary_url(tmp_path: Path) -> Iterator[str]:
    with database("postgresql", tmp_path) as url:
        yield url


def test_an_unreachable_replica_stops_the_start_naming_its_variable(primary_url: str) -> None:
    replica = f"postgresql://kg:pa55-w0rd@127.0.0.1:{free_port()}/kg"
    keyguard = Keyguard(settings_for(primary_url, database_read_url=replica))
    keyguard.store.migrate()
    try:
        with pytest.raises(StorageUnavailable) as refused:
            keyguard.start()
    finally:
        keyguard.stop()
    assert "KEYGUARD_DATABASE_READ_URL is right" in refused.value.message
    assert "pa55-w0rd" not in refused.value.message


def test_a_replica_without_the_schema_stops_the_start(
    primary_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "REPLICA_SCHEMA_WAIT", 0.3)
    with database("postgresql", tmp_path / "elsewhere") as unmigrated:
        keyguard = Keyguard(settings_for(primary_url, database_read_url=unmigrated))
        keyguard.store.migrate()
        try:
            with pytest.raises(ConfigurationError) as refused:
                keyguard.start()
        finally:
            keyguard.stop()
    assert "KEYGUARD_DATABASE_READ_URL" in refused.value.message
    assert "has no keyguard schema" in refused.value.message


# -- a real streaming replica -------------------------------------------------


class Replicated(NamedTuple):
    primary: PostgresCluster
    standby: PostgresCluster


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    try:
        server_binaries()
    except ClusterError as error:
        missing(str(error))
    with PostgresCluster.initdb() as primary:
        primary.start()
        with PostgresCluster.standby_of(primary) as standby:
            yield Replicated(primary, standby.start())


class Instance(NamedTuple):
    server: KeyguardServer
    client: httpx.Client  # no key: /auth/forward, /healthz, /metrics
    management: httpx.Client  # as the account's full-access key


class Pair(NamedTuple):
    """One instance following the replica, one writing the primary alone."""

    follower: Instance
    writer: Instance


@pytest.fixture
def pair(replicated: Replicated, servers: Servers) -> Iterator[Pair]:
    primary = {"KEYGUARD_DATABASE_URL": replicated.primary.url}
    follower = servers(
        "follower", settings={**primary, "KEYGUARD_DATABASE_READ_URL": replicated.standby.url}
    )
    writer = servers("writer", settings=primary)
    token = writer.create_account("acme")["api_key"]["value"]  # migrates the primary
    wait_for("the standby to replay the migration", lambda: replayed(*replicated))
    follower.start()
    writer.start()
    with (
        follower.client() as f_client,
        follower.client(token) as f_management,
        writer.client() as w_client,
        writer.client(token) as w_management,
    ):
        yield Pair(
            Instance(follower, f_client, f_management), Instance(writer, w_client, w_management)
        )


def status(instance: Instance, token: str) -> int:
    return forward(instance.client, token, *PROBE).status


def replica_gauge(instance: Instance, name: str) -> float:
    [value] = gauges(instance.client, f"keyguard_replica_{name}")
    return value


@pytest.mark.slow
def test_keys_created_and_revoked_through_either_instance_are_enforced_within_lag_and_a_poll(
    pair: Pair,
) -> None:
    follower, writer = pair

    # Written through the follower: its own snapshot takes the result at once.
    own = create_key(follower.management, label="through the follower")
    assert status(follower, own["value"]) == 200
    revoked = follower.management.patch(f"/v1/api-keys/{own['id']}/deactivate")
    assert revoked.status_code == 200, revoked.text
    assert status(follower, own["value"]) == 401

    # Written through the other instance: only the replica brings it.
    other = create_key(writer.management, label="through the writer")
    seen = wait_for(
        "a key created on the primary to be allowed",
        lambda: status(follower, other["value"]) == 200,
        timeout=BOUND,
    )
    deleted = writer.management.delete(f"/v1/api-keys/{other['id']}")
    assert deleted.status_code == 200, deleted.text
    refused = wait_for(
        "a key deleted on the primary to be refused",
        lambda: status(follower, other["value"]) == 401,
        timeout=BOUND,
    )
    print(f"through the replica: allowed after {seen:.3f} s, refused after {refused:.3f} s")
    assert status(follower, own["value"]) == 401  # the replica's copy did not bring it back
    assert replica_gauge(follower, "up") == 1.0


@pytest.mark.slow
def test_a_lagging_replica_keeps_old_decisions_until_replay_resumes_then_converges(
    replicated: Replicated, pair: Pair
) -> None:
    follower, writer = pair
    key = create_key(writer.management, label="revoked while the replica lags")
    wait_for("the key to be allowed", lambda: status(follower, key["value"]) == 200, BOUND)
    assert replica_gauge(follower, "lag_seconds") < BOUND

    pause_replay(replicated.standby)
    deleted = writer.management.delete(f"/v1/api-keys/{key['id']}")
    assert deleted.status_code == 200, deleted.text
    assert status(writer, key["value"]) == 401
    started = time.monotonic()
    lags = []
    while time.monotonic() - started < LAGGING:
        assert status(follower, key["value"]) == 200  # the replica has not replayed it
        lags.append(replica_gauge(follower, "lag_seconds"))
        time.sleep(REFRESH_INTERVAL)
    assert lags[-1] > lags[0], lags
    assert lags[-1] >= LAGGING - BOUND, lags
    assert replica_gauge(follower, "revisions_behind") >= 1
    assert health(follower.client)["replica_lag_seconds"] >= LAGGING - BOUND

    pause_replay(replicated.standby, paused=False)
    converged = wait_for(
        "the delete to be enforced once replay resumes",
        lambda: status(follower, key["value"]) == 401,
        timeout=BOUND,
    )
    print(f"refused {converged:.3f} s after replay resumed (lag was {lags[-1]:.2f} s)")
    wait_for("the lag to fall back", lambda: replica_gauge(follower, "lag_seconds") == 0.0, BOUND)
    assert replica_gauge(follower, "revisions_behind") == 0


@pytest.mark.slow
def test_the_management_api_reads_its_own_writes_while_the_replica_lags(
    replicated: Replicated, pair: Pair
) -> None:
    follower = pair.follower
    pause_replay(replicated.standby)

    created = create_key(follower.management, label="made while the replica lags")
    listed = follower.management.get("/v1/api-keys").json()
    assert created["id"] in [key["id"] for key in listed]
    renamed = follower.management.patch(f"/v1/api-keys/{created['id']}", json={"label": "renamed"})
    assert renamed.status_code == 200, renamed.text
    fetched = follower.management.get(f"/v1/api-keys/{created['id']}")
    assert (fetched.status_code, fetched.json()["label"]) == (200, "renamed")
    assert status(follower, created["value"]) == 200
    follower.management.patch(f"/v1/api-keys/{created['id']}/deactivate").raise_for_status()
    assert follower.management.get(f"/v1/api-keys/{created['id']}").json()["active"] is False
    time.sleep(3 * REFRESH_INTERVAL)  # polls of a replica that lacks all of it
    assert status(follower, created["value"]) == 401

    pause_replay(replicated.standby, paused=False)
    wait_for("the replica to catch up", lambda: replayed(*replicated))
    time.sleep(2 * REFRESH_INTERVAL)
    assert status(follower, created["value"]) == 401
    assert follower.management.get(f"/v1/api-keys/{created['id']}").json()["label"] == "renamed"


@pytest.mark.slow
def test_with_the_replica_down_decisions_go_on_from_the_snapshot_and_health_says_so(
    replicated: Replicated, pair: Pair
) -> None:
    follower, writer = pair
    live = create_key(writer.management, label="live")
    doomed = create_key(writer.management, label="deleted while the replica is down")
    inactive = create_key(writer.management, label="inactive")
    writer.management.patch(f"/v1/api-keys/{inactive['id']}/deactivate").raise_for_status()
    probes = [live["value"], doomed["value"], inactive["value"], generate("kg")]
    wait_for("the keys to arrive", lambda: status(follower, doomed["value"]) == 200, BOUND)
    before = [status(follower, token) for token in probes]
    assert before == [200, 200, 401, 401]

    replicated.standby.stop()
    wait_for("/healthz to say so", lambda: health(follower.client)["replica"] == "unreachable")
    assert health(follower.client)["database"] == "ok"  # the primary still answers
    assert replica_gauge(follower, "up") == 0.0
    assert gauges(follower.client, "keyguard_database_up") == [1.0]
    for _round in range(3):
        assert [status(follower, token) for token in probes] == before
    made = create_key(follower.management, label="made while the replica is down")
    assert status(follower, made["value"]) == 200
    writer.management.delete(f"/v1/api-keys/{doomed['id']}").raise_for_status()
    time.sleep(2 * REFRESH_INTERVAL)
    assert status(follower, doomed["value"]) == 200  # nothing tells it but the replica
    assert replica_gauge(follower, "lag_seconds") > 0.0

    replicated.standby.start()
    wait_for("/healthz to say ok", lambda: health(follower.client)["replica"] == "ok")
    wait_for("the delete to be enforced", lambda: status(follower, doomed["value"]) == 401)
    assert [status(follower, token) for token in probes[:1] + probes[2:]] == [200, 401, 401]
    assert status(follower, made["value"]) == 200
