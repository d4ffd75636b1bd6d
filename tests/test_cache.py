from dataclasses import replace
from ipaddress import ip_address

from keyguard.cache import KeyCache, Profile
from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import Level
from keyguard.storage import open_store


def _world() -> tuple[KeyCache, int, int]:
    store = open_store("memory://")
    account, key = store.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    cache = KeyCache(store)
    cache.refresh()
    return cache, account.id, key.id


def test_refresh_loads_every_live_key_with_its_parsed_rules() -> None:
    store = open_store("memory://")
    account, _ = store.create_account("a", b"a" * 32, b"s", KeySettings(label="k"))
    store.create_key(
        account.id,
        b"b" * 32,
        b"s",
        KeySettings(label="r", restricted=True, permitted_ips=("10.0.0.0/8",)),
    )
    cache = KeyCache(store)
    assert cache.refresh() == 2
    restricted = cache.get(b"b" * 32)
    assert restricted is not None
    networks = restricted[1].networks
    assert networks is not None
    assert networks.permits(ip_address("10.255.0.1"))
    assert not networks.permits(ip_address("11.0.0.1"))
    unrestricted = cache.get(b"a" * 32)
    assert unrestricted is not None
    assert unrestricted[1].networks is None
    assert len(cache) == 2
    assert cache.refreshed_at is not None


def test_refresh_applies_updates_and_deletions() -> None:
    cache, account_id, key_id = _world()
    store = cache._store
    store.update_key(account_id, key_id, KeyChanges(active=False))
    assert cache.refresh() == 1
    cached = cache.get(b"d" * 32)
    assert cached is not None
    assert not cached[1].active
    store.delete_key(account_id, key_id)
    cache.refresh()
    assert cache.get(b"d" * 32) is None
    assert cache.refresh() == 0


def test_older_copy_of_a_key_never_overwrites_a_newer_one() -> None:
    cache, account_id, key_id = _world()
    old = cache._store.get_key(account_id, key_id)
    assert old is not None
    newer = cache._store.update_key(account_id, key_id, KeyChanges(active=False))
    assert newer is not None
    cache.put(newer)
    cache.put(old)
    cached = cache.get(b"d" * 32)
    assert cached is not None
    assert not cached[1].active


def test_late_copy_does_not_resurrect_a_deleted_key() -> None:
    cache, account_id, key_id = _world()
    old = cache._store.get_key(account_id, key_id)
    tombstone = cache._store.delete_key(account_id, key_id)
    assert old is not None
    assert tombstone is not None
    cache.put(tombstone)
    cache.put(replace(old))
    assert cache.get(b"d" * 32) is None


def test_a_first_load_holds_what_taking_in_each_key_holds() -> None:
    store = open_store("memory://")
    account, _ = store.create_account("a", b"a" * 32, b"s", KeySettings(label="k"))
    varied = [
        KeySettings(label="r", restricted=True, permitted_ips=("10.0.0.0/8",)),
        KeySettings(label="s", scopes_enabled=True, scopes={"numbers": Level.READ}),
        KeySettings(label="c", remaining=10),
        KeySettings(label="r2", restricted=True, permitted_ips=("10.0.0.0/8",)),
    ]
    keys = [store.create_key(account.id, bytes([n]) * 32, b"s", s) for n, s in enumerate(varied)]
    tombstone = store.delete_key(account.id, keys[3].id)
    assert tombstone is not None
    fast = KeyCache(store)  # has seen nothing: the first load's own path
    fast.refresh()
    slow = KeyCache(store)  # has seen a key: each key taken in as a refresh takes it
    slow.put(tombstone)
    slow.refresh()
    digests = [b"a" * 32, *(key.digest for key in keys)]
    for cache in (fast, slow):
        assert len(cache) == 4
    assert [_shared(fast.get(d)) for d in digests] == [_shared(slow.get(d)) for d in digests]
    assert {p.shared: p.holders for p in fast.profiles()} == {
        p.shared: p.holders for p in slow.profiles()
    }
    assert [key.key_id for key in fast.credited()] == [keys[2].id]
    assert [key.key_id for key in slow.credited()] == [keys[2].id]


def _shared(found: tuple[int, Profile] | None) -> tuple[int, object] | None:
    return None if found is None else (found[0], found[1].shared)
