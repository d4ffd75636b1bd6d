"""The contract every Store backend keeps; one suite, run on each of them."""

import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from keyguard.domain.counts import Granularity
from keyguard.domain.credits import Refill
from keyguard.domain.events import EVENT_ACTIONS, Delivery, Sweep
from keyguard.domain.fields import KeyChanges
from keyguard.domain.leaks import Leak
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.records import (
    Account,
    AccountStatus,
    Actor,
    ChangeFeed,
    Imported,
    KeySettings,
    KeyState,
    StoredKey,
)
from keyguard.domain.scopes import Level
from keyguard.errors import Conflict
from keyguard.storage import AuditQuery, KeyRewrite, NewKey, Store, open_store
from keyguard.storage.sql import SQLStore
from keyguard.storage.tables import accounts
from tests.conftest import BACKENDS, database

_digests = count(1)


def _digest() -> bytes:
    return next(_digests).to_bytes(32, "big")


@pytest.fixture(params=["memory", *BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend once: the in-memory one and every database."""
    with database(request.param, tmp_path) as url:
        backend = open_store(url)
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
    changes = store.changes_since(key.revision).keys
    assert [(change.id, change.deleted) for change in changes] == [(key.id, True)]


def test_change_feed_returns_everything_after_a_revision(store: Store) -> None:
    account_id = _account(store)
    start = store.changes_since(0).revision
    created = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    updated = store.update_key(account_id, created.id, KeyChanges(active=False))
    assert updated is not None
    changes = store.changes_since(start)
    assert changes.revision == updated.revision
    assert changes.keys == [updated]
    assert changes.accounts == []
    assert store.changes_since(changes.revision) == ChangeFeed(changes.revision, [], [])


def test_revision_is_where_the_change_feed_ends(store: Store) -> None:
    account_id = _account(store)
    before = store.newest_revision()
    assert store.changes_since(0).revision == before
    created = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    assert store.newest_revision() == created.revision > before
    assert store.changes_since(before).revision == store.newest_revision()


def test_initial_feed_skips_deleted_keys(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    store.delete_key(account_id, key.id)
    changes = store.changes_since(0).keys
    assert key.id not in [change.id for change in changes]


def _streamed(store: Store, revision: int) -> tuple[int, list[Account], list[KeyState]]:
    with store.stream_changes(revision) as stream:
        return stream.revision, stream.accounts, sorted(stream.keys, key=lambda k: k.revision)


def _state(key: StoredKey, first_load: bool) -> KeyState:
    """What a stream yields of ``key``: a first load carries no change time."""
    state = KeyState.of(key)
    return state._replace(changed_at=None) if first_load else state


def test_streamed_feed_holds_what_the_change_feed_holds(store: Store) -> None:
    account_id = _account(store)
    expires = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    restricted = KeySettings(
        label="r",
        restricted=True,
        permitted_ips=("10.0.0.0/8", "2001:db8::/32"),
        scopes_enabled=True,
        scopes={"messages": Level.WRITE, "numbers": Level.READ},
        expires_at=expires,
        ratelimit=RateLimit(10, 60),
    )
    for settings in (restricted, restricted, KeySettings(label="plain", scopes_enabled=True)):
        store.create_key(account_id, _digest(), b"s", settings)
    gone = store.create_key(account_id, _digest(), b"s", KeySettings(label="gone"))
    store.delete_key(account_id, gone.id)
    other = _account(store, "other")
    store.set_account_status(other, AccountStatus.SUSPENDED)
    for start in (0, gone.revision - 1):
        feed = store.changes_since(start)
        revision, accounts, states = _streamed(store, start)
        assert (revision, accounts) == (feed.revision, feed.accounts)
        assert states == [_state(key, start == 0) for key in feed.keys]
    first = _streamed(store, 0)[2]
    assert first[1].networks == restricted.permitted_ips
    assert first[1].expires == expires.timestamp()
    assert dict(first[1].scopes or ()) == restricted.scopes
    assert first[3].scopes == ()
    assert first[3].networks is None
    assert gone.id not in [state.id for state in first]


def test_a_bounded_snapshot_reads_live_digests_and_keys_by_digest_or_id(store: Store) -> None:
    account_id = _account(store)
    imported = store.import_keys(
        account_id, [NewKey(_digest(), b"", KeySettings(label="i"), "sha256")]
    )
    assert len(imported.created) == 1
    kept = [store.create_key(account_id, _digest(), b"s", KeySettings(label=f"{n}")) for n in "ab"]
    gone = store.create_key(account_id, _digest(), b"s", KeySettings(label="gone"))
    store.delete_key(account_id, gone.id)
    other = _account(store, "other")
    store.set_account_status(other, AccountStatus.SUSPENDED)
    feed = store.changes_since(0)
    with store.stream_digests() as stream:
        digests = sorted((bytes(digest), how) for digest, how in stream.digests)
        assert (stream.revision, stream.accounts) == (feed.revision, feed.accounts)
        assert stream.live == len(feed.keys) == 5  # two roots, the import, two kept
    assert digests == sorted((key.digest, key.imported) for key in feed.keys)
    assert "sha256" in [how for _, how in digests]
    assert gone.digest not in dict(digests)
    by_digest = store.key_states(digests=[kept[0].digest, gone.digest, _digest()])
    stored = store.get_key(account_id, kept[0].id)
    assert stored is not None
    assert by_digest == [KeyState.of(stored)]
    by_id = store.key_states(ids=[kept[1].id, gone.id])
    assert [state.id for state in by_id] == [kept[1].id]
    assert by_id[0].changed_at is not None
    assert store.key_states() == []


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


def test_usage_of_unknown_key_is_ignored_and_the_rest_is_written(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    when = datetime(2026, 6, 1, 9, 0, 0, tzinfo=UTC)
    store.record_usage({999_999: when, key.id: when})
    stored = store.get_key(account_id, key.id)
    assert stored is not None
    assert stored.last_used_at == when
    assert store.get_key(account_id, 999_999) is None


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


def test_suspended_account_appears_in_the_feed_and_resumes(store: Store) -> None:
    account_id = _account(store)
    start = store.changes_since(0).revision
    suspended = store.set_account_status(account_id, AccountStatus.SUSPENDED)
    assert suspended is not None
    assert suspended.status is AccountStatus.SUSPENDED
    changes = store.changes_since(start)
    assert [(a.id, a.status) for a in changes.accounts] == [(account_id, AccountStatus.SUSPENDED)]
    assert [(a.id, a.status) for a in store.changes_since(0).accounts] == [
        (account_id, AccountStatus.SUSPENDED)
    ]
    store.set_account_status(account_id, AccountStatus.ACTIVE)
    assert store.changes_since(0).accounts == []
    assert store.get_account(account_id) == Account(
        account_id,
        "acme",
        suspended.created_at,
        AccountStatus.ACTIVE,
        store.changes_since(0).revision,
    )


def test_deleted_account_is_gone_with_its_keys(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"secret", KeySettings(label="k"))
    start = store.changes_since(0).revision
    assert store.set_account_status(account_id, AccountStatus.DELETED) is not None
    assert store.get_account(account_id) is None
    assert account_id not in [account.id for account in store.list_accounts()]
    assert store.list_keys(account_id) == []
    changes = store.changes_since(start)
    assert {change.id for change in changes.keys if change.deleted} == {key.id, key.id - 1}
    assert store.set_account_status(account_id, AccountStatus.ACTIVE) is None


def test_every_change_is_audited_with_actor_and_without_secrets(store: Store) -> None:
    operator = Actor("operator", ip="192.0.2.1")
    account, first = store.create_account(
        "acme", _digest(), b"sealed-secret", KeySettings(label="first"), operator
    )
    by_key = Actor("key", first.id, "198.51.100.7")
    key = store.create_key(account.id, _digest(), b"s", KeySettings(label="k"), by_key)
    store.update_key(account.id, key.id, KeyChanges(active=False), by_key, "key.deactivate")
    store.delete_key(account.id, key.id, by_key)
    records, total = store.list_audit(AuditQuery(account.id))
    assert total == 5
    assert [r.action for r in records] == [
        "key.delete", "key.deactivate", "key.create", "key.create", "account.create",
    ]  # fmt: skip
    deactivated = records[1]
    assert deactivated.actor == by_key
    assert deactivated.key_id == key.id
    assert deactivated.before is not None
    assert deactivated.after is not None
    assert (deactivated.before["active"], deactivated.after["active"]) == (True, False)
    assert records[-1].actor == operator
    for record in records:
        for document in (record.before, record.after):
            assert "value" not in (document or {})
            assert "secret" not in str(document)


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        pytest.param("2001:db8::7", "2001:db8::7", id="address"),
        pytest.param("x" * 100, "x" * 64, id="longer_than_any_address"),
        pytest.param("a\x00b\ud800", "a?b?", id="unprintable"),
    ],
)
def test_actor_address_is_recorded_printable_and_at_most_64_characters(
    store: Store, given: str, recorded: str
) -> None:
    account_id = _account(store)
    key = store.create_key(
        account_id, _digest(), b"s", KeySettings(label="k"), Actor("key", 1, given)
    )
    [record] = store.list_audit(AuditQuery(account_id, key_id=key.id))[0]
    assert record.actor == Actor("key", 1, recorded)


def test_audit_filters_and_pages(store: Store) -> None:
    account_id = _account(store)
    other = _account(store, "other")
    keys = [store.create_key(account_id, _digest(), b"s", KeySettings(label="k")) for _ in range(4)]
    store.update_key(account_id, keys[0].id, KeyChanges(label="renamed"))
    assert store.list_audit(AuditQuery(other))[1] == 2  # its own creation only
    by_key, total = store.list_audit(AuditQuery(account_id, key_id=keys[0].id))
    assert (total, [r.action for r in by_key]) == (2, ["key.update", "key.create"])
    created, total = store.list_audit(
        AuditQuery(account_id, action="key.create", offset=1, limit=2)
    )
    assert total == 5
    assert [r.key_id for r in created] == [keys[2].id, keys[1].id]
    future = datetime.now(UTC) + timedelta(days=1)
    assert store.list_audit(AuditQuery(account_id, since=future)) == ([], 0)
    assert store.list_audit(AuditQuery(account_id, until=future))[1] == 7


def test_audit_of_every_account_is_read_with_no_account_id(store: Store) -> None:
    first, second = _account(store, "first"), _account(store, "second")
    key = store.create_key(second, _digest(), b"s", KeySettings(label="k"))
    operator = Actor("operator", ip="192.0.2.1")
    store.set_account_status(first, AccountStatus.SUSPENDED, operator)

    records, total = store.list_audit(AuditQuery(None))

    assert total == 6
    assert [(r.account_id, r.action) for r in records] == [
        (first, "account.suspend"),
        (second, "key.create"),
        (second, "key.create"),
        (second, "account.create"),
        (first, "key.create"),
        (first, "account.create"),
    ]
    assert records[0].actor == operator
    assert store.list_audit(AuditQuery(None, action="key.create", offset=1, limit=1)) == (
        [records[2]],
        3,
    )
    assert store.list_audit(AuditQuery(None, key_id=key.id)) == ([records[1]], 1)


def test_a_deleted_accounts_trail_stays_readable(store: Store) -> None:
    account_id = _account(store)
    store.set_account_status(account_id, AccountStatus.DELETED, Actor("operator"))

    records, total = store.list_audit(AuditQuery(account_id))

    assert store.get_account(account_id) is None
    assert total == 3
    assert [r.action for r in records] == ["account.delete", "key.create", "account.create"]
    assert store.list_audit(AuditQuery(None)) == (records, 3)


def test_usage_within_the_settle_time_is_not_rewritten(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    first = datetime(2026, 6, 1, 8, 0, 0, tzinfo=UTC)
    store.record_usage({key.id: first}, settle=59)
    store.record_usage({key.id: first + timedelta(seconds=59)}, settle=59)
    stored = store.get_key(account_id, key.id)
    assert stored is not None
    assert stored.last_used_at == first
    store.record_usage({key.id: first + timedelta(seconds=60)}, settle=59)
    stored = store.get_key(account_id, key.id)
    assert stored is not None
    assert stored.last_used_at == first + timedelta(seconds=60)


def test_secret_check_is_absent_until_proposed_and_the_first_proposal_stays(store: Store) -> None:
    first, second = b"\x01" * 32, b"\x02" * 32
    assert store.secret_check() is None
    assert store.secret_check(first) == first
    assert store.secret_check(second) == first
    assert store.secret_check() == first


def test_recording_the_secret_check_is_no_change_to_keys(store: Store) -> None:
    _account(store)
    revision = store.changes_since(0).revision
    store.secret_check(b"\x01" * 32)
    assert store.changes_since(revision) == ChangeFeed(revision, [], [])


# -- rewriting keys under a new server secret ------------------------------------


def test_a_rewritten_key_has_its_new_digest_and_sealed_value_in_the_feed_and_nothing_else_changes(
    store: Store,
) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"old-sealed", KeySettings(label="k"))
    store.record_usage({key.id: datetime(2026, 6, 1, 9, 0, 0, tzinfo=UTC)})
    used = store.get_key(account_id, key.id)
    assert used is not None
    audited = store.list_audit(AuditQuery(account_id))[1]
    new_digest = _digest()

    assert store.rewrite_keys([KeyRewrite(key.id, key.digest, new_digest, b"new-sealed")]) == 1

    rewritten = store.get_key(account_id, key.id)
    assert rewritten is not None
    assert (rewritten.digest, rewritten.sealed_value) == (new_digest, b"new-sealed")
    assert rewritten.revision > key.revision
    assert rewritten == replace(
        used,
        digest=new_digest,
        sealed_value=b"new-sealed",
        revision=rewritten.revision,
        changed_at=rewritten.changed_at,
    )
    assert store.changes_since(key.revision).keys == [rewritten]
    assert store.list_audit(AuditQuery(account_id))[1] == audited


def test_one_rewrite_of_several_keys_is_one_revision(store: Store) -> None:
    account_id = _account(store)
    keys = [store.create_key(account_id, _digest(), b"s", KeySettings(label="k")) for _ in range(3)]
    start = store.changes_since(0).revision

    rewrites = [KeyRewrite(key.id, key.digest, _digest(), b"n") for key in keys]
    assert store.rewrite_keys(rewrites) == 3

    changes = store.changes_since(start)
    assert changes.revision == start + 1
    assert sorted((key.id, key.digest, key.revision) for key in changes.keys) == [
        (rewrite.key_id, rewrite.digest, start + 1) for rewrite in rewrites
    ]


def test_a_key_deleted_or_rewritten_since_it_was_read_is_left_alone(store: Store) -> None:
    account_id = _account(store)
    deleted = store.create_key(account_id, _digest(), b"s", KeySettings(label="deleted"))
    moved = store.create_key(account_id, _digest(), b"s", KeySettings(label="moved"))
    store.delete_key(account_id, deleted.id)
    assert store.rewrite_keys([KeyRewrite(moved.id, moved.digest, _digest(), b"first")]) == 1
    start = store.changes_since(0).revision

    stale = [
        KeyRewrite(deleted.id, deleted.digest, _digest(), b"revived"),
        KeyRewrite(moved.id, moved.digest, _digest(), b"second"),
    ]
    assert store.rewrite_keys(stale) == 0

    assert store.get_key(account_id, deleted.id) is None
    assert deleted.id not in [key.id for key in store.changes_since(0).keys]
    current = store.get_key(account_id, moved.id)
    assert current is not None
    assert current.sealed_value == b"first"
    assert store.changes_since(start).keys == []


def test_after_a_rewrite_the_new_digest_is_taken_and_the_old_one_is_free(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    new_digest = _digest()
    store.rewrite_keys([KeyRewrite(key.id, key.digest, new_digest, b"n")])

    store.create_key(account_id, key.digest, b"s", KeySettings(label="old digest"))
    with pytest.raises(Exception):  # noqa: B017,PT011 - each backend raises its own integrity error
        store.create_key(account_id, new_digest, b"s", KeySettings(label="new digest"))


def test_replacing_the_secret_check_replaces_it_and_is_no_change_to_keys(store: Store) -> None:
    _account(store)
    store.secret_check(b"\x01" * 32)
    revision = store.changes_since(0).revision

    store.replace_secret_check(b"\x02" * 32)

    assert store.secret_check() == b"\x02" * 32
    assert store.secret_check(b"\x03" * 32) == b"\x02" * 32
    assert store.changes_since(revision) == ChangeFeed(revision, [], [])


def test_keys_are_listed_in_pages_by_id_and_counted(store: Store) -> None:
    account_id = _account(store)
    other = _account(store, "globex")
    made = [
        store.create_key(account_id, _digest(), b"s", KeySettings(label=f"k{n}")) for n in range(5)
    ]
    store.create_key(other, _digest(), b"s", KeySettings(label="theirs"))
    store.delete_key(account_id, made[0].id)
    live = store.list_keys(account_id)

    assert [key.id for key in live] == sorted(key.id for key in live)
    assert store.list_keys(account_id, offset=1, limit=2) == live[1:3]
    assert store.list_keys(account_id, offset=5, limit=2) == []
    for offset in range(len(live) + 1):  # pages deep in the list, found from its end
        assert store.list_keys(account_id, offset=offset, limit=2) == live[offset : offset + 2]
        assert store.list_keys(account_id, offset=offset) == live[offset:]
    assert store.count_keys(account_id) == len(live) == 5  # the first key and four more
    assert store.count_keys(account_id, "K") == 4
    assert (
        store.list_keys(account_id, "k", offset=3)
        == [key for key in live if "k" in key.settings.label][3:]
    )
    assert store.count_keys(other) == 2


def test_a_rolled_key_has_a_successor_with_its_settings_and_ends_with_the_grace(
    store: Store,
) -> None:
    account_id = _account(store)
    settings = KeySettings(label="ci", scopes_enabled=True, scopes={"numbers": Level.READ})
    old = store.create_key(account_id, _digest(), b"s", settings)
    grace_until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    rolled = store.roll_key(account_id, old.id, _digest(), b"new", grace_until, Actor("cli"))

    assert rolled is not None
    ended, new = rolled
    assert ended.settings == replace(settings, expires_at=grace_until)
    assert new.settings == settings
    assert new.rolled_from == old.id
    assert new.revision == ended.revision > old.revision
    assert store.get_key(account_id, new.id) == new
    assert store.get_key(account_id, old.id) == ended
    assert store.roll_key(account_id, 999, _digest(), b"x", grace_until) is None
    actions = [record.action for record in store.list_audit(AuditQuery(account_id))[0]]
    assert actions[:2] == ["key.roll", "key.create"]


# -- webhook delivery: the audit trail is the outbox ---------------------------

LEASE = timedelta(seconds=10)
NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def test_the_first_claim_starts_delivery_after_the_newest_audit_record(store: Store) -> None:
    _account(store)  # account.create and key.create: history, not announced
    assert store.delivery_backlog(EVENT_ACTIONS) == 0
    delivery = store.claim_delivery("a", NOW, LEASE)
    assert delivery == Delivery(2)
    account_id = _account(store, "later")
    assert store.delivery_backlog(EVENT_ACTIONS) == 1
    [event] = store.pending_events(delivery.delivered_through, EVENT_ACTIONS, 10)
    assert (event.action, event.account_id) == ("key.create", account_id)


def test_one_process_holds_the_lease_until_it_lapses_or_is_released(store: Store) -> None:
    assert store.claim_delivery("a", NOW, LEASE) is not None
    assert store.claim_delivery("b", NOW + LEASE / 2, LEASE) is None
    assert store.claim_delivery("a", NOW + LEASE * 0.9, LEASE) is not None  # renewed
    assert store.claim_delivery("b", NOW + LEASE * 1.5, LEASE) is None
    assert store.claim_delivery("b", NOW + LEASE * 2, LEASE) is not None  # a's lapsed
    assert store.claim_delivery("a", NOW + LEASE * 2, LEASE) is None
    store.release_delivery("a")  # not a's to release
    assert store.claim_delivery("a", NOW + LEASE * 2, LEASE) is None
    store.release_delivery("b")
    assert store.claim_delivery("a", NOW + LEASE * 2, LEASE) is not None


def test_pending_events_are_the_announced_actions_after_the_cursor_in_commit_order(
    store: Store,
) -> None:
    store.claim_delivery("a", NOW, LEASE)
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    store.update_key(account_id, key.id, KeyChanges(label="renamed"))
    store.set_account_status(account_id, AccountStatus.SUSPENDED)
    store.delete_key(account_id, key.id)
    events = store.pending_events(0, EVENT_ACTIONS, 100)
    assert [event.action for event in events] == [
        "key.create", "key.create", "key.update", "account.suspend", "key.delete",
    ]  # fmt: skip
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert store.pending_events(events[2].id, EVENT_ACTIONS, 1) == [events[3]]
    assert store.delivery_backlog(EVENT_ACTIONS) == 5


def test_delivery_moves_forward_only_and_forgets_the_retry_it_passed(store: Store) -> None:
    store.claim_delivery("a", NOW, LEASE)
    _account(store)
    [first] = store.pending_events(0, EVENT_ACTIONS, 10)
    retry_at = NOW + timedelta(seconds=4)
    store.delay_delivery("a", first.id, 3, retry_at)
    store.delay_delivery("b", first.id, 9, NOW)  # b holds no lease: ignored
    assert store.claim_delivery("a", NOW, LEASE) == Delivery(0, first.id, 3, retry_at)
    store.advance_delivery(first.id)
    store.advance_delivery(first.id - 1)
    assert store.claim_delivery("a", NOW, LEASE) == Delivery(first.id)
    assert store.pending_events(first.id, EVENT_ACTIONS, 10) == []
    assert store.delivery_backlog(EVENT_ACTIONS) == 0


WARNING = timedelta(days=7)


def _notices(store: Store, account_id: int) -> list[tuple[str, int | None, str | None]]:
    records = store.list_audit(AuditQuery(account_id, limit=100))[0]
    return [
        (record.action, record.key_id, (record.after or {}).get("expires_at"))
        for record in reversed(records)
        if record.action in ("key.expiring", "key.expire")
    ]


def _expiring(store: Store, account_id: int, label: str, expires_at: datetime) -> int:
    settings = KeySettings(label=label, expires_at=expires_at)
    return store.create_key(account_id, _digest(), b"s", settings).id


def test_each_expiry_is_noted_once_ahead_and_once_when_it_comes(store: Store) -> None:
    account_id = _account(store)
    soon = _expiring(store, account_id, "soon", NOW + timedelta(days=3))
    later = _expiring(store, account_id, "later", NOW + timedelta(days=30))
    deleted = _expiring(store, account_id, "deleted", NOW + timedelta(days=1))
    store.delete_key(account_id, deleted)
    sweep = store.note_expiries(NOW, WARNING, None)
    sweep = store.note_expiries(NOW + timedelta(seconds=1), WARNING, sweep)
    assert _notices(store, account_id) == [("key.expiring", soon, "2026-12-11T12:00:00Z")]

    sweep = store.note_expiries(NOW + timedelta(days=3), WARNING, sweep)  # soon expires
    sweep = store.note_expiries(NOW + timedelta(days=23, hours=1), WARNING, sweep)
    sweep = store.note_expiries(NOW + timedelta(days=31), WARNING, sweep)

    assert _notices(store, account_id) == [
        ("key.expiring", soon, "2026-12-11T12:00:00Z"),
        ("key.expire", soon, "2026-12-11T12:00:00Z"),
        ("key.expiring", later, "2027-01-07T12:00:00Z"),
        ("key.expire", later, "2027-01-07T12:00:00Z"),
    ]
    [record] = store.list_audit(AuditQuery(account_id, action="key.expire", limit=1))[0]
    assert (record.actor.kind, record.before) == ("keyguard", None)


def test_a_key_that_expired_unwatched_is_noted_expired_only(store: Store) -> None:
    account_id = _account(store)
    key = _expiring(store, account_id, "k", NOW + timedelta(hours=1))
    store.note_expiries(NOW + timedelta(days=1), WARNING, None)
    assert _notices(store, account_id) == [("key.expire", key, "2026-12-08T13:00:00Z")]


def test_a_new_expiry_gets_notices_of_its_own(store: Store) -> None:
    account_id = _account(store)
    key = _expiring(store, account_id, "k", NOW + timedelta(days=2))
    sweep = store.note_expiries(NOW, WARNING, None)
    store.update_key(account_id, key, KeyChanges(expires_at=NOW + timedelta(days=5)))
    sweep = store.note_expiries(NOW + timedelta(seconds=1), WARNING, sweep)
    store.update_key(account_id, key, KeyChanges(expires_at="never"))
    store.note_expiries(NOW + timedelta(days=6), WARNING, sweep)
    assert _notices(store, account_id) == [
        ("key.expiring", key, "2026-12-10T12:00:00Z"),
        ("key.expiring", key, "2026-12-13T12:00:00Z"),
    ]


def test_a_sweep_after_another_sees_keys_made_since_whatever_their_expiry(store: Store) -> None:
    account_id = _account(store)
    sweep = store.note_expiries(NOW, WARNING, None)
    assert isinstance(sweep, Sweep)
    made = _expiring(store, account_id, "made since", NOW + timedelta(hours=2))
    store.note_expiries(NOW + timedelta(seconds=1), WARNING, sweep)
    assert _notices(store, account_id) == [("key.expiring", made, "2026-12-08T14:00:00Z")]


def test_counts_from_several_flushes_add_up_in_every_granularity(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    at = datetime(2030, 1, 1, 10, 30, 15, tzinfo=UTC)

    store.record_counts({key.id: (account_id, 3, 1, 0, 0, 0)}, at)
    store.record_counts({key.id: (account_id, 2, 0, 4, 1, 0)}, at + timedelta(seconds=30))
    store.record_counts({key.id: (account_id, 1, 0, 0, 0, 0)}, at + timedelta(minutes=1))

    day = datetime(2030, 1, 1, tzinfo=UTC)
    minutes = store.usage_series(
        account_id, key.id, Granularity.MINUTE, day, day + timedelta(days=1)
    )
    assert minutes == {
        datetime(2030, 1, 1, 10, 30, tzinfo=UTC): (5, 1, 4, 1, 0),
        datetime(2030, 1, 1, 10, 31, tzinfo=UTC): (1, 0, 0, 0, 0),
    }
    hours = store.usage_series(account_id, key.id, Granularity.HOUR, day, day + timedelta(days=1))
    assert hours == {datetime(2030, 1, 1, 10, tzinfo=UTC): (6, 1, 4, 1, 0)}
    assert store.usage_totals(account_id, Granularity.DAY, day, day + timedelta(days=1)) == {
        key.id: (6, 1, 4, 1, 0)
    }
    assert store.usage_totals(_account(store, "globex"), Granularity.DAY, day, at) == {}
    assert store.usage_series(account_id + 1, key.id, Granularity.DAY, day, at) == {}


def test_counts_of_several_keys_are_read_at_once_for_those_keys_and_that_span_only(
    store: Store,
) -> None:
    account_id = _account(store)
    first, second, third = (
        store.create_key(account_id, _digest(), b"s", KeySettings(label=label))
        for label in ("a", "b", "c")
    )
    other = _account(store, "globex")
    outsider = store.create_key(other, _digest(), b"s", KeySettings(label="x"))
    at = datetime(2030, 1, 1, 10, 30, tzinfo=UTC)
    store.record_counts(
        {
            first.id: (account_id, 3, 1, 0, 0, 0),
            second.id: (account_id, 0, 0, 2, 0, 0),
            third.id: (account_id, 9, 0, 0, 0, 0),
            outsider.id: (other, 7, 0, 0, 0, 0),
        },
        at,
    )
    store.record_counts({first.id: (account_id, 1, 0, 0, 0, 1)}, at + timedelta(hours=1))
    store.record_counts({first.id: (account_id, 5, 0, 0, 0, 0)}, at + timedelta(hours=3))

    since, until = at - timedelta(hours=1), at + timedelta(hours=2)
    wanted = [first.id, second.id, outsider.id, 999_999]
    found = store.usage_of_keys(account_id, wanted, Granularity.HOUR, since, until)

    assert found == {
        first.id: {
            datetime(2030, 1, 1, 10, tzinfo=UTC): (3, 1, 0, 0, 0),
            datetime(2030, 1, 1, 11, tzinfo=UTC): (1, 0, 0, 0, 1),
        },
        second.id: {datetime(2030, 1, 1, 10, tzinfo=UTC): (0, 0, 2, 0, 0)},
    }
    for key in (first, second):
        series = store.usage_series(account_id, key.id, Granularity.HOUR, since, until)
        assert found[key.id] == series
    assert store.usage_of_keys(account_id, [], Granularity.HOUR, since, until) == {}


def test_counts_past_their_retention_are_pruned(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    old, recent = datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 3, 1, tzinfo=UTC)
    store.record_counts({key.id: (account_id, 1, 0, 0, 0, 0)}, old)
    store.record_counts({key.id: (account_id, 1, 0, 0, 0, 0)}, recent)

    pruned = store.prune_usage({Granularity.MINUTE: recent, Granularity.HOUR: recent})

    assert pruned == 2  # the old minute and the old hour; the old day stays
    everything = (old, recent + timedelta(days=1))
    assert list(store.usage_series(account_id, key.id, Granularity.MINUTE, *everything)) == [recent]
    assert list(store.usage_series(account_id, key.id, Granularity.DAY, *everything)) == [
        old,
        recent,
    ]


def test_a_recount_repairs_counts_that_writers_of_an_older_version_did_not_keep(
    store: Store,
) -> None:
    account_id = _account(store)
    store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    if isinstance(store, SQLStore):  # as an instance of a version before 0005 leaves it
        with store.engine.begin() as connection:
            connection.execute(update(accounts).values(key_count=0))
        assert store.count_keys(account_id) == 0

    store.recount_keys()

    assert store.count_keys(account_id) == 2


# -- leaks ------------------------------------------------------------------------------

GITHUB = Actor("github", ip="192.0.2.30")
FOUND = {"url": "https://github.com/octocat/x/blob/1/.env", "source": "content"}


def _leak(store: Store, digests: list[bytes], found: Mapping[str, Any] = FOUND) -> StoredKey | None:
    [key] = store.leak_keys([Leak(tuple(digests), found)], GITHUB)
    return key


def test_a_leaked_key_is_inactive_for_good_in_one_audited_revision(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))

    leaked = _leak(store, [_digest(), key.digest], FOUND)

    assert leaked is not None
    assert (leaked.id, leaked.settings, leaked.deleted) == (
        key.id,
        replace(key.settings, active=False),
        False,
    )
    assert leaked.leaked_at is not None
    assert leaked.leaked_at.tzinfo is UTC
    assert store.get_key(account_id, key.id) == leaked
    assert store.changes_since(key.revision) == ChangeFeed(leaked.revision, [leaked], [])
    [record], _total = store.list_audit(AuditQuery(account_id, action="key.leak"))
    assert (record.key_id, record.actor) == (key.id, GITHUB)
    assert record.after is not None
    assert {name: record.after[name] for name in FOUND} == FOUND
    assert record.after["active"] is False


def test_leaking_a_key_again_changes_nothing(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    leaked = _leak(store, [key.digest], FOUND)
    revision = store.changes_since(0).revision

    again = _leak(store, [key.digest], {"url": "elsewhere", "source": "commit"})

    assert again == leaked
    assert store.changes_since(revision) == ChangeFeed(revision, [], [])
    assert store.list_audit(AuditQuery(account_id, action="key.leak"))[1] == 1


def test_a_leak_of_no_key_or_of_a_deleted_one_changes_nothing(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    tombstone = store.delete_key(account_id, key.id)
    revision = store.changes_since(0).revision

    assert _leak(store, [_digest()], FOUND) is None
    assert _leak(store, [key.digest], FOUND) == tombstone
    assert store.changes_since(revision) == ChangeFeed(revision, [], [])
    assert store.list_audit(AuditQuery(account_id, action="key.leak"))[1] == 0


def test_a_report_revokes_each_key_it_names_once_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyguard.storage.sql.LEAK_BATCH", 2)  # three batches for five keys
    account_id, other_account = _account(store), _account(store, "other")
    made = [store.create_key(account_id, _digest(), b"s", KeySettings(label="k")) for _ in range(4)]
    made.append(store.create_key(other_account, _digest(), b"s", KeySettings(label="o")))
    gone = store.create_key(account_id, _digest(), b"s", KeySettings(label="gone"))
    tombstone = store.delete_key(account_id, gone.id)
    named = [made[0], made[1], made[0], made[2], made[3], made[4]]
    leaks = [
        Leak((key.digest,), {"url": f"u{i}", "source": "content"}) for i, key in enumerate(named)
    ]
    leaks.insert(2, Leak((_digest(),), FOUND))
    leaks.append(Leak((gone.digest,), FOUND))
    revision = store.changes_since(0).revision

    stored = store.leak_keys(leaks, GITHUB)

    assert stored[2] is None
    assert stored[-1] == tombstone
    revoked = [key for key in stored if key is not None and not key.deleted]
    assert [key.id for key in revoked] == [key.id for key in named]
    assert all(key.leaked_at is not None and not key.settings.active for key in revoked)
    assert stored[0] == stored[3]  # named twice: revoked once, the second time as it is
    assert revoked == [store.get_key(key.account_id, key.id) for key in revoked]
    feed = store.changes_since(revision)
    assert sorted(key.id for key in feed.keys) == sorted(key.id for key in made)
    records = [
        record
        for account in (account_id, other_account)
        for record in store.list_audit(AuditQuery(account, action="key.leak"))[0]
    ]
    assert sorted((r.key_id, r.after["url"]) for r in records if r.after) == sorted(
        [(made[0].id, "u0"), (made[1].id, "u1"), (made[2].id, "u3"), (made[3].id, "u4"),
         (made[4].id, "u5")]
    )  # fmt: skip


def test_a_leaked_key_cannot_be_activated_but_may_change_otherwise(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    leaked = _leak(store, [key.digest], FOUND)
    assert leaked is not None

    with pytest.raises(Conflict):
        store.update_key(account_id, key.id, KeyChanges(label="again", active=True))
    assert store.get_key(account_id, key.id) == leaked
    renamed = store.update_key(account_id, key.id, KeyChanges(label="renamed"))

    assert renamed is not None
    assert (renamed.settings, renamed.leaked_at) == (
        replace(leaked.settings, label="renamed"),
        leaked.leaked_at,
    )


def test_a_leaked_key_rolls_into_an_active_key(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k", active=True))
    _leak(store, [key.digest], FOUND)
    grace_until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    rolled = store.roll_key(account_id, key.id, _digest(), b"n", grace_until)

    assert rolled is not None
    old, new = rolled
    assert (old.settings.active, old.leaked_at is not None) == (False, True)
    assert (new.settings.active, new.leaked_at, new.rolled_from) == (True, None, key.id)


# -- import -----------------------------------------------------------------------------


def _new(label: str, imported: Imported = "value", **settings: Any) -> NewKey:
    sealed = b"" if imported == "sha256" else b"sealed " + label.encode()
    return NewKey(_digest(), sealed, KeySettings(label=label, **settings), imported)


def test_imported_keys_read_back_with_their_kind_in_one_new_revision(store: Store) -> None:
    account_id = _account(store)
    before = store.changes_since(0).revision
    batch = [
        _new("by value", scopes_enabled=True, scopes={"calls": Level.READ}),
        _new("by digest", "sha256", restricted=True, permitted_ips=("10.0.0.0/8",)),
    ]

    result = store.import_keys(account_id, batch)

    assert (result.existing, result.elsewhere) == ([], [])
    feed = store.changes_since(before)
    assert [key.id for key in feed.keys] == result.created
    assert {key.revision for key in feed.keys} == {feed.revision} == {before + 1}
    for new, key in zip(batch, feed.keys, strict=True):
        assert (key.digest, key.sealed_value, key.settings, key.imported) == (
            new.digest,
            new.sealed_value,
            new.settings,
            new.imported,
        )
        assert key.changed_at is not None
        assert store.get_key(account_id, key.id) == key
    assert store.count_keys(account_id) == 3


def test_an_import_skips_digests_held_here_elsewhere_or_earlier_in_the_batch(
    store: Store,
) -> None:
    account_id, other_id = _account(store, "a"), _account(store, "b")
    [here] = store.import_keys(account_id, [mine := _new("mine")]).created
    [theirs] = store.import_keys(other_id, [foreign := _new("theirs")]).created
    fresh = _new("fresh")

    result = store.import_keys(account_id, [mine, foreign, fresh, fresh])

    assert (len(result.created), result.existing, result.elsewhere) == (1, [0, 3], [1])
    assert store.get_key(other_id, theirs) is not None  # never moved
    assert store.get_key(account_id, theirs) is None
    assert [key.id for key in store.list_keys(account_id)][1:] == [here, *result.created]
    assert store.count_keys(account_id) == 3
    assert store.count_keys(other_id) == 2


def test_an_import_is_audited_once_per_batch_with_counts_and_ids_and_no_secret(
    store: Store,
) -> None:
    account_id = _account(store)
    kept = _new("kept")
    store.import_keys(account_id, [kept])
    batch = [kept, _new("one"), _new("two", "sha256")]

    result = store.import_keys(account_id, batch, Actor("cli"))

    records, _total = store.list_audit(AuditQuery(account_id, action="key.import"))
    assert len(records) == 2
    newest = records[0]
    assert (newest.key_id, newest.actor, newest.before) == (None, Actor("cli"), None)
    assert newest.after == {
        "imported": 2,
        "first_key_id": result.created[0],
        "last_key_id": result.created[1],
        "skipped": 1,
        "skipped_elsewhere": 0,
    }


def test_an_import_with_nothing_new_writes_nothing(store: Store) -> None:
    account_id = _account(store)
    key = store.create_key(account_id, _digest(), b"s", KeySettings(label="k"))
    store.delete_key(account_id, key.id)
    revision = store.changes_since(0).revision
    _records, audited = store.list_audit(AuditQuery(account_id))
    deleted_again = NewKey(key.digest, b"s", KeySettings(label="back"), "value")

    result = store.import_keys(account_id, [deleted_again])

    assert (result.created, result.existing) == ([], [0])  # a deleted key stays deleted
    assert store.changes_since(0).revision == revision
    assert store.list_audit(AuditQuery(account_id))[1] == audited
    assert store.get_key(account_id, key.id) is None


# -- usage credits ------------------------------------------------------------------

DAY = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _credited(store: Store, remaining: int, refill: Refill | None = None) -> tuple[int, int]:
    account_id = _account(store)
    settings = KeySettings(label="metered", remaining=remaining, refill=refill)
    return account_id, store.create_key(account_id, _digest(), b"s", settings).id


def _remaining(store: Store, account_id: int, key_id: int) -> int | None:
    key = store.get_key(account_id, key_id)
    assert key is not None
    return key.settings.remaining


def test_credits_are_leased_up_to_what_is_left(store: Store) -> None:
    account_id, key_id = _credited(store, 5)

    first = store.lease_credits({key_id: 3}, DAY)[key_id]
    second = store.lease_credits({key_id: 3}, DAY)[key_id]
    dry = store.lease_credits({key_id: 3}, DAY)[key_id]

    assert (first.granted, first.left) == (3, 2)
    assert (second.granted, second.left) == (2, 0)
    assert (dry.granted, dry.left) == (0, 0)
    assert _remaining(store, account_id, key_id) == 0


def test_unlimited_and_unknown_keys_get_no_lease(store: Store) -> None:
    account_id = _account(store)
    unlimited = store.create_key(account_id, _digest(), b"s", KeySettings(label="free"))

    assert store.lease_credits({unlimited.id: 5, 999_999: 5}, DAY) == {}


def test_returned_credits_are_added_back(store: Store) -> None:
    account_id, key_id = _credited(store, 10)
    lease = store.lease_credits({key_id: 4}, DAY)[key_id]

    store.return_credits({key_id: replace(lease, granted=3)})

    assert _remaining(store, account_id, key_id) == 9


def test_a_change_of_credits_drops_the_leases_taken_before_it(store: Store) -> None:
    account_id, key_id = _credited(store, 10)
    lease = store.lease_credits({key_id: 4}, DAY)[key_id]

    changed = store.update_key(account_id, key_id, KeyChanges(remaining=20))
    store.return_credits({key_id: lease})

    assert changed is not None
    assert changed.credits_epoch > lease.epoch
    assert _remaining(store, account_id, key_id) == 20


def test_a_change_of_anything_else_keeps_leases_and_credits(store: Store) -> None:
    account_id, key_id = _credited(store, 10)
    lease = store.lease_credits({key_id: 4}, DAY)[key_id]

    store.update_key(account_id, key_id, KeyChanges(label="renamed"))
    store.return_credits({key_id: lease})

    assert _remaining(store, account_id, key_id) == 10


def test_a_refill_sets_the_credits_at_the_start_of_the_next_period(store: Store) -> None:
    account_id, key_id = _credited(store, 2, Refill(7, "daily"))
    today = datetime.now(UTC)
    tomorrow = today + timedelta(days=1)
    spent = store.lease_credits({key_id: 5}, today)[key_id]

    refilled = store.lease_credits({key_id: 3}, tomorrow)[key_id]
    store.return_credits({key_id: spent})  # yesterday's: dropped, not added

    assert spent.granted == 2
    assert (refilled.granted, refilled.left) == (3, 4)
    assert refilled.period == spent.period + 1
    assert _remaining(store, account_id, key_id) == 4
    assert store.lease_credits({key_id: 3}, tomorrow)[key_id].granted == 3  # once a period


def test_leases_taken_at_once_never_exceed_the_credits(store: Store) -> None:
    account_id, key_id = _credited(store, 100)
    granted: list[int] = []

    def lease() -> None:
        for _ in range(20):
            grant = store.lease_credits({key_id: 3}, DAY).get(key_id)
            granted.append(0 if grant is None else grant.granted)

    threads = [threading.Thread(target=lease) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(granted) + (_remaining(store, account_id, key_id) or 0) == 100
    assert sum(granted) <= 100
