"""The contract every Store backend keeps; one suite, run on each of them."""

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import Level
from keyguard.storage import Store, open_store

_digests = count(1)


def _digest() -> bytes:
    return next(_digests).to_bytes(32, "big")


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[Store]:
    backend = open_store("memory://" if request.param == "memory" else database_url)
    backend.migrate()
    yield backend
    backend.close()


def _account(store: Store, name: str = "acme") -> int:
    account, _key = store.create_account(name, _digest(), b"sealed", KeySettings(label="first"))
    return account.id


def test_account_is_created_with_its_first_key(store: Store) -> None:
    account, key = store.create_account("acme", _digest(), b"s", KeySettings(label="first"))
    assert store.get_account(account.id) == account
    assert store.list_accounts() == [account]
    assert store.list_keys(account.id) == [key]
    assert key.account_id == account.id
    assert key.last_used_at is None


def test_created_key_reads_back_identically(store: Store) -> None:
    account_id = _account(store)
    settings = KeySettings(
        label="ci",
        active=False,
        restricted=True,
        permitted_ips=("10.0.0.0/8", "2001:db8::1"),
        scopes_enabled=True,
        scopes={"numbers": Level.READ, "two_fa": Level.WRITE},
    )
    key = store.create_key(account_id, _digest(), b"sealed-value", settings)
    assert store.get_key(account_id, key.id) == key
    assert key.settings == settings
    assert key.created_at.tzinfo is UTC
    assert key.created_at.microsecond == 0


def test_key_ids_are_unique_across_accounts(store: Store) -> None:
    first, second = _account(store, "a"), _account(store, "b")
    ids = [store.create_key(account, _digest(), b"s", KeySettings(label="k")).id
           for account in (first, second, first)]  # fmt: skip
    assert len(set(ids)) == 3


def test_duplicate_digest_is_refused(store: Store) -> None:
    account_id = _account(store)
    digest = _digest()
    store.create_key(account_id, digest, b"s", KeySettings(label="one"))
    with pytest.raises(Exception):  # noqa: B017,PT011 - each backend raises its own integrity error
        store.create_key(account_id, digest, b"s", KeySettings(label="two"))


def test_another_account_cannot_see_or_change_a_key(store: Store) -> None:
    owner, stranger = _account(store, "owner"), _account(store, "stranger")
    key = store.create_key(owner, _digest(), b"s", KeySettings(label="k"))
    assert store.get_key(stranger, key.id) is None
    assert store.update_key(stranger, key.id, KeyChanges(label="mine")) is None
    assert store.delete_key(stranger, key.id) is None
    assert store.get_key(owner, key.id) == key


@pytest.mark.parametrize(
    ("needle", "expected"),
    [("PROD", ["Production", "preprod"]), ("100%", ["100% ok"]), ("a_b", ["a_b"]), ("", None)],
    ids=["case_insensitive", "percent_is_literal", "underscore_is_literal", "empty_is_no_filter"],
)
def test_label_filter_is_a_case_insensitive_substring(
    store: Store, needle: str, expected: list[str] | None
) -> None:
    account_id = _account(store)
    for label in ("Production", "preprod", "100% ok", "a_b", "axb"):
        store.create_key(account_id, _digest(), b"s", KeySettings(label=label))
    labels = [key.settings.label for key in store.list_keys(account_id, needle)]
    everything = [key.settings.label for key in store.list_keys(account_id)]
    assert labels == (everything if expected is None else expected)


def test_update_changes_only_given_fields_and_bumps_revision(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(
        account_id, _digest(), b"s", KeySettings(label="k", scopes={"calls": Level.READ})
    )
    updated = store.update_key(account_id, key.id, KeyChanges(scopes={"numbers": Level.WRITE}))
    assert updated is not None
    assert updated.settings == replace(
        key.settings, scopes={"calls": Level.READ, "numbers": Level.WRITE}
    )
    assert updated.revision > key.revision
    assert store.get_key(account_id, key.id) == updated


def test_deleted_key_is_gone_and_leaves_a_tombstone_without_secret(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"secret", KeySettings(label="k"))
    tombstone = store.delete_key(account_id, key.id)
    assert tombstone is not None
    assert tombstone.deleted
    assert tombstone.sealed_value == b""
    assert store.get_key(account_id, key.id) is None
    assert key.id not in [listed.id for listed in store.list_keys(account_id)]
    assert store.delete_key(account_id, key.id) is None
    assert store.update_key(account_id, key.id, KeyChanges(active=False)) is None
    _revision, changes = store.changes_since(key.revision)
    assert [(change.id, change.deleted) for change in changes] == [(key.id, True)]


def test_change_feed_returns_everything_after_a_revision(store: Store) -> None:
    account_id = _account(store)
    start, _ = store.changes_since(0)
    created = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    updated = store.update_key(account_id, created.id, KeyChanges(active=False))
    assert updated is not None
    revision, changes = store.changes_since(start)
    assert revision == updated.revision
    assert changes == [updated]
    assert store.changes_since(revision) == (revision, [])


def test_initial_feed_skips_deleted_keys(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    store.delete_key(account_id, key.id)
    _revision, changes = store.changes_since(0)
    assert key.id not in [change.id for change in changes]


def test_usage_moves_forward_only_and_does_not_touch_revision(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    later = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    store.record_usage({key.id: later})
    store.record_usage({key.id: later - timedelta(hours=1)})
    stored = store.get_key(account_id, key.id)
    assert stored is not None
    assert stored.last_used_at == later
    assert stored.revision == key.revision


def test_usage_of_unknown_key_is_ignored(store: Store) -> None:
    store.record_usage({999_999: datetime.now(UTC)})


def test_usage_of_many_keys_is_written_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyguard.storage.sql.USAGE_BATCH", 2)
    account_id = _account(store)
    keys = [store.create_key(account_id, _digest(), b"s", KeySettings(label="k")) for _ in range(5)]
    when = datetime(2026, 6, 1, 8, 30, 0, tzinfo=UTC)
    store.record_usage({key.id: when + timedelta(seconds=key.id) for key in keys})
    for key in keys:
        stored = store.get_key(account_id, key.id)
        assert stored is not None
        assert stored.last_used_at == when + timedelta(seconds=key.id)
