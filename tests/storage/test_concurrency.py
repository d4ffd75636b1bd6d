"""Writers that race on one database lose nothing."""

import threading
from collections.abc import Callable, Iterator

import pytest

from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import Level
from keyguard.storage import Store, open_store


def _race(actions: list[Callable[[], object]]) -> None:
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], object]) -> None:
        barrier.wait()
        action()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture
def two_stores(database_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two processes would have."""
    first, second = open_store(database_url), open_store(database_url)
    first.migrate()
    yield first, second
    first.close()
    second.close()


def test_concurrent_patches_of_one_key_lose_no_field(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    account, key = first.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    groups = ["numbers", "trunks", "calls", "messages", "billing", "account"]
    stores = [first, second]

    def grant(store: Store, group: str) -> Callable[[], object]:
        return lambda: store.update_key(account.id, key.id, KeyChanges(scopes={group: Level.WRITE}))

    _race([grant(stores[i % 2], group) for i, group in enumerate(groups)])
    stored = first.get_key(account.id, key.id)
    assert stored is not None
    assert stored.settings.scopes == dict.fromkeys(groups, Level.WRITE)


def test_delete_racing_updates_leaves_the_key_deleted(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    account, key = first.create_account("a", b"d" * 32, b"s", KeySettings(label="k"))
    _race([
        lambda: second.update_key(account.id, key.id, KeyChanges(label="renamed")),
        lambda: first.delete_key(account.id, key.id),
        lambda: second.update_key(account.id, key.id, KeyChanges(active=False)),
    ])  # fmt: skip
    assert first.get_key(account.id, key.id) is None
    changes = first.changes_since(key.revision).keys
    assert changes[-1].deleted


def test_concurrent_creates_get_distinct_ids_and_revisions(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    account, _ = first.create_account("a", b"\x00" * 32, b"s", KeySettings(label="k"))
    made: list[int] = []

    def create(store: Store, digest: bytes) -> Callable[[], object]:
        return lambda: made.append(
            store.create_key(account.id, digest, b"s", KeySettings(label="k")).id
        )

    _race([create((first, second)[i % 2], bytes([i + 1]) * 32) for i in range(8)])
    assert len(set(made)) == 8
    changes = first.changes_since(0).keys
    assert len({change.revision for change in changes}) == 9
