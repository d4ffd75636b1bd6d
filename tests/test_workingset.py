"""The bounded snapshot: a working set of keys, a digest filter, reads on a miss."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard.cache import KeyCache
from keyguard.decide import UNAUTHORIZED, UNCACHED, Decider, Decision
from keyguard.domain.fields import KeyChanges
from keyguard.domain.keys import generate
from keyguard.domain.records import AccountStatus, DigestStream, KeySettings
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.errors import StorageUnavailable
from keyguard.importing import Importer
from keyguard.runtime import MANAGEMENT_ROUTES, wavix_route_map
from keyguard.storage import Store, open_store
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault
from keyguard.workingset import DigestFilter, WorkingSet

IP = "198.51.100.7"
ROUTES = wavix_route_map().with_routes(MANAGEMENT_ROUTES)
VAULT = Vault(b"k" * 32)
TOKENS = [generate("kg") for _ in range(8)]


def digest_of(number: int) -> bytes:
    return hashlib.sha256(number.to_bytes(8, "big", signed=True)).digest()


class World:
    """A memory store with an account, a working set of ``size`` keys over it, and a
    decider; keys are written to the store as another process would."""

    def __init__(self, size: int, store: Store | None = None) -> None:
        self.store = store or open_store("memory://")
        self.account, _ = self.store.create_account(
            "acme", digest_of(0), b"s", KeySettings(label="root")
        )
        self.keys: dict[str, int] = {}
        for token in TOKENS[:5]:
            self.create(token)
        self.cache = WorkingSet(self.store, size)
        self.cache.refresh()
        usage = UsageRecorder(self.store)
        self.decider = Decider(VAULT, self.cache, ROUTES, usage)

    def create(self, token: str, active: bool = True) -> int:
        key = self.store.create_key(
            self.account.id, VAULT.digest(token), b"s", KeySettings(label="k", active=active)
        )
        self.keys[token] = key.id
        return key.id

    def decide(self, token: str, path: str = "/v1/numbers") -> Decision:
        return self.decider.decide(token, IP, "GET", path)


def test_a_key_outside_the_working_set_is_read_once_then_held() -> None:
    world = World(size=3)
    assert len(world.cache) == 0  # a first load reads digests, no keys
    assert world.decide(TOKENS[0]).allowed
    assert (world.cache.reads, len(world.cache)) == (1, 1)
    for _ in range(3):
        assert world.decide(TOKENS[0]).allowed
    assert world.cache.reads == 1


def test_a_token_of_no_key_costs_no_read() -> None:
    world = World(size=3)
    for _ in range(1000):
        assert world.decide(generate("kg")) is UNAUTHORIZED
    assert world.cache.reads == 0


def test_the_clock_evicts_the_key_unused_longest() -> None:
    world = World(size=3)
    for token in TOKENS[:3]:
        world.decide(token)
    world.decide(TOKENS[1])
    world.decide(TOKENS[2])
    # The hand clears every bit on its way round and evicts the first slot it
    # finds cleared: the first key, used before the others' second use.
    assert world.decide(TOKENS[3]).allowed
    assert (len(world.cache), world.cache.evictions, world.cache.reads) == (3, 1, 4)
    held = {token: world.cache.get(VAULT.digest(token)) is not None for token in TOKENS[:4]}
    assert held == {TOKENS[0]: False, TOKENS[1]: True, TOKENS[2]: True, TOKENS[3]: True}
    assert world.decide(TOKENS[0]).allowed  # evicted keys are read again
    assert world.cache.reads == 5


def test_a_held_key_is_revoked_by_the_change_feed_without_a_read() -> None:
    world = World(size=3)
    assert world.decide(TOKENS[0]).allowed
    world.store.update_key(world.account.id, world.keys[TOKENS[0]], KeyChanges(active=False))
    world.cache.refresh()
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.cache.reads == 1


def test_an_evicted_key_is_revoked_when_it_is_read_again() -> None:
    world = World(size=1)
    assert world.decide(TOKENS[0]).allowed
    assert world.decide(TOKENS[1]).allowed  # evicts the first
    world.store.update_key(world.account.id, world.keys[TOKENS[0]], KeyChanges(active=False))
    world.cache.refresh()
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.cache.reads == 3


def test_a_held_key_follows_changes_of_its_scopes() -> None:
    world = World(size=3)
    assert world.decide(TOKENS[0]).allowed
    changes = KeyChanges(scopes_enabled=True, scopes={"numbers": Level.NONE})
    world.store.update_key(world.account.id, world.keys[TOKENS[0]], changes)
    world.cache.refresh()
    assert world.decide(TOKENS[0]).status == 403


def test_a_deleted_key_is_read_once_then_known_to_be_no_key() -> None:
    world = World(size=3)
    world.store.delete_key(world.account.id, world.keys[TOKENS[0]])
    world.cache.refresh()
    assert world.decide(TOKENS[0]) is UNAUTHORIZED  # the filter keeps its digest
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.cache.reads == 1
    deleted_while_held = world.keys[TOKENS[1]]
    assert world.decide(TOKENS[1]).allowed
    world.store.delete_key(world.account.id, deleted_while_held)
    world.cache.refresh()
    assert world.decide(TOKENS[1]) is UNAUTHORIZED
    assert world.cache.by_id(deleted_while_held) is None


def test_a_key_created_after_the_start_is_found_and_a_digest_held_as_no_key_makes_way() -> None:
    world = World(size=3)
    assert world.decide(TOKENS[6]) is UNAUTHORIZED
    world.cache.fetch([VAULT.digest(TOKENS[6])])  # as if the filter had let it through
    world.create(TOKENS[6])
    world.cache.refresh()
    assert world.decide(TOKENS[6]).allowed


def test_a_suspended_account_s_keys_fail_whether_held_or_read() -> None:
    world = World(size=3)
    assert world.decide(TOKENS[0]).allowed
    world.store.set_account_status(world.account.id, AccountStatus.SUSPENDED)
    world.cache.refresh()
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.decide(TOKENS[1]) is UNAUTHORIZED
    restarted = WorkingSet(world.store, 3)  # a first load learns suspended accounts too
    restarted.refresh()
    assert world.account.id in restarted.blocked_accounts


def test_without_fetch_a_decision_waits_for_the_caller_to_read() -> None:
    world = World(size=3)
    assert world.decider.decide(TOKENS[0], IP, "GET", "/v1/numbers", fetch=False) is UNCACHED
    assert world.decider.outcomes == {200: 0, 401: 0, 403: 0, 429: 0}  # no decision yet
    world.decider.fetch(TOKENS[0])
    decision = world.decider.decide(TOKENS[0], IP, "GET", "/v1/numbers", fetch=False)
    assert decision.allowed
    assert world.cache.reads == 1


def test_a_failed_read_refuses_the_key_and_holds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(size=3)

    def unavailable(*_: object, **__: object) -> None:
        raise StorageUnavailable("down")

    with monkeypatch.context() as patched:
        patched.setattr(world.store, "key_states", unavailable)
        assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert len(world.cache) == 0
    assert world.decide(TOKENS[0]).allowed  # read again once the store answers


def test_a_read_that_raced_a_change_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(size=3)
    read = world.store.key_states
    key_id = world.keys[TOKENS[0]]

    def racing(*args: object, **kwargs: object) -> object:
        found = read(*args, **kwargs)  # type: ignore[arg-type]
        if world.cache.reads == 1:  # the key changes after the read, before it is held
            world.store.update_key(world.account.id, key_id, KeyChanges(active=False))
            world.cache.refresh()
        return found

    monkeypatch.setattr(world.store, "key_states", racing)
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.cache.reads == 2
    assert not world.cache.get(VAULT.digest(TOKENS[0]))[1].active  # type: ignore[index]


def test_keys_imported_by_sha256_are_found_in_a_bounded_snapshot() -> None:
    store = open_store("memory://")
    account, _ = store.create_account("acme", digest_of(0), b"s", KeySettings(label="root"))
    foreign = "unkey_3ZzQ8example"
    record = {"sha256": hashlib.sha256(foreign.encode()).hexdigest(), "label": "old"}
    tally = Importer(store, VAULT, ScopeGroups(), account.id).run(iter([(1, record)]))
    assert tally.imported == 1
    cache = WorkingSet(store, 3)
    cache.refresh()
    assert cache.imported_sha256
    decider = Decider(VAULT, cache, ROUTES, UsageRecorder(store))
    assert decider.decide(foreign, IP, "GET", "/v1/numbers").allowed


def test_by_id_reads_a_key_not_held() -> None:
    world = World(size=1)
    key = world.cache.by_id(world.keys[TOKENS[2]])
    assert key is not None
    assert key.account_id == world.account.id
    assert len(world.cache) == 0


def test_the_filter_is_built_again_once_deleted_keys_wear_it() -> None:
    world = World(size=3)
    for token in TOKENS[:3]:
        world.store.delete_key(world.account.id, world.keys[token])
    world.cache.refresh()  # 3 of 6 digests stale: past a quarter, a rebuild starts
    builder = world.cache._builder
    assert builder is not None
    builder.join(timeout=10)
    assert world.cache.filter.count == 3  # the root key and the two left
    assert VAULT.digest(TOKENS[0]) not in world.cache.filter
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    assert world.cache.reads == 0


def test_the_filter_has_no_false_negatives_and_few_false_positives() -> None:
    expected = 20_000
    bloom = DigestFilter(expected)
    members = [digest_of(number) for number in range(bloom.capacity)]
    for digest in members:
        bloom.add(digest)
    assert all(digest in bloom for digest in members)
    strangers = [digest_of(-number) for number in range(1, 100_001)]
    rate = sum(digest in bloom for digest in strangers) / len(strangers)
    assert rate <= 0.01  # at capacity, as documented
    assert abs(rate - bloom.false_positive_rate) < 0.003
    assert not bloom.full
    bloom.add(digest_of(-1))
    assert bloom.full


@dataclass(frozen=True)
class Write:
    token: int
    active: bool
    scoped: bool


@dataclass(frozen=True)
class Delete:
    token: int


operations = st.lists(
    st.one_of(
        st.builds(Write, st.integers(0, len(TOKENS) - 1), st.booleans(), st.booleans()),
        st.builds(Delete, st.integers(0, len(TOKENS) - 1)),
    ),
    max_size=25,
)


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(operations=operations, size=st.integers(1, 4))
def test_a_working_set_decides_as_the_full_snapshot_does(
    operations: list[Write | Delete], size: int
) -> None:
    world = World(size)
    full = KeyCache(world.store)
    full.refresh()
    judge = Decider(VAULT, full, ROUTES, UsageRecorder(world.store))
    deleted: set[int] = set()  # a digest stays taken once its key is deleted
    for operation in operations:
        key_id = world.keys.get(TOKENS[operation.token])
        if isinstance(operation, Delete) or operation.token in deleted:
            if key_id is not None and operation.token not in deleted:
                world.store.delete_key(world.account.id, key_id)
                deleted.add(operation.token)
        elif key_id is None:
            world.create(TOKENS[operation.token], active=operation.active)
        else:
            changes = KeyChanges(
                active=operation.active,
                scopes_enabled=operation.scoped,
                scopes={"numbers": Level.NONE},
            )
            world.store.update_key(world.account.id, key_id, changes)
        world.cache.refresh()
        full.refresh()
        for token in TOKENS:
            assert world.decide(token) == judge.decide(token, IP, "GET", "/v1/numbers")
        assert len(world.cache) <= size


def test_an_older_read_never_brings_back_a_key_deleted_while_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(size=3)
    digest = VAULT.digest(TOKENS[0])
    read = world.store.key_states
    raced: list[bool] = []

    def racing(*args: object, **kwargs: object) -> object:
        found = read(*args, **kwargs)  # type: ignore[arg-type]
        if not raced:  # while this read is out, another takes the key, then it is deleted
            raced.append(True)
            world.cache.fetch([digest])
            assert world.cache.get(digest) is not None
            world.store.delete_key(world.account.id, world.keys[TOKENS[0]])
            world.cache.refresh()
            assert world.cache.get(digest) is None
        return found

    monkeypatch.setattr(world.store, "key_states", racing)
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    world.cache.refresh()
    assert world.cache.get(digest) is None
    assert world.decide(TOKENS[0]) is UNAUTHORIZED


def test_an_older_read_never_brings_back_a_key_revoked_then_evicted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(size=1)
    digest = VAULT.digest(TOKENS[0])
    read = world.store.key_states
    raced: list[bool] = []

    def racing(*args: object, **kwargs: object) -> object:
        found = read(*args, **kwargs)  # type: ignore[arg-type]
        if not raced:
            raced.append(True)
            world.cache.fetch([digest])  # held by another read
            world.store.update_key(
                world.account.id, world.keys[TOKENS[0]], KeyChanges(active=False)
            )
            world.cache.refresh()  # the held copy is revoked
            world.cache.fetch([VAULT.digest(TOKENS[1])])  # and evicted
            assert world.cache.get(digest) is None
        return found

    monkeypatch.setattr(world.store, "key_states", racing)
    assert world.decide(TOKENS[0]) is UNAUTHORIZED
    held = world.cache.get(digest)
    assert held is None or not held[1].active


def test_keys_not_held_are_read_from_the_reader_not_the_feed() -> None:
    feed = open_store("memory://")  # a replica that has not replayed the key yet
    world = World(size=3)
    cache = WorkingSet(feed, 3, reader=world.store)
    cache.refresh()
    cache.filter.add(VAULT.digest(TOKENS[0]))  # the feed will say so in a moment
    decider = Decider(VAULT, cache, ROUTES, UsageRecorder(world.store))
    assert decider.decide(TOKENS[0], IP, "GET", "/v1/numbers").allowed


def test_a_rebuilt_filter_keeps_the_digests_of_held_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(size=3)
    digest = VAULT.digest(TOKENS[0])
    assert world.decide(TOKENS[0]).allowed
    stream = world.store.stream_digests

    @contextmanager
    def missing_one() -> Iterator[DigestStream]:  # a row changed after the stream began
        with stream() as found:
            rows = [(d, how) for d, how in found.digests if d != digest]
            yield DigestStream(found.revision, found.accounts, found.live, iter(rows))

    monkeypatch.setattr(world.store, "stream_digests", missing_one)
    world.cache._rebuild()
    assert digest in world.cache.filter


def test_digests_of_no_key_never_evict_the_key_their_read_found() -> None:
    world = World(size=1)
    previous = Vault(b"p" * 32)
    vault = Vault(b"k" * 32, previous=b"p" * 32)
    decider = Decider(vault, world.cache, ROUTES, UsageRecorder(world.store))
    world.cache.filter.add(previous.digest(TOKENS[0]))  # a false positive of the filter
    assert decider.decide(TOKENS[0], IP, "GET", "/v1/numbers").allowed
    assert world.cache.reads == 1


def test_after_a_failed_read_the_event_loop_does_not_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(size=3)
    reads: list[bool] = []

    def unavailable(*_: object, **__: object) -> None:
        reads.append(True)
        raise StorageUnavailable("down")

    monkeypatch.setattr(world.store, "key_states", unavailable)
    decider = world.decider
    assert decider.decide(TOKENS[0], IP, "GET", "/v1/numbers", fetch=False) is UNCACHED
    decision = anyio.run(decider.decide_after_read, TOKENS[0], IP, "GET", "/v1/numbers")
    assert decision is UNAUTHORIZED
    assert len(reads) == 1  # in the worker thread; none on the loop after it
