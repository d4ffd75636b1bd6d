"""An in-memory :class:`~keyguard.storage.Store`, for tests and throwaway runs, and
its :class:`~keyguard.storage.ChangeSignal`, the twin of PostgreSQL's LISTEN/NOTIFY."""

import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from keyguard.domain.audit import STATUS_ACTIONS
from keyguard.domain.counts import OUTCOMES, Granularity, totals
from keyguard.domain.credits import CreditGrant, period_of
from keyguard.domain.events import Delivery, Sweep, expiry_notice
from keyguard.domain.fields import KeyChanges, apply, rolled_settings
from keyguard.domain.leaks import (
    Leak,
    is_revocable,
    leaked_settings,
    refuse_activation,
    successor_settings,
)
from keyguard.domain.records import (
    CLI,
    KEYGUARD,
    Account,
    AccountStatus,
    Action,
    Actor,
    AuditRecord,
    ChangeFeed,
    DigestStream,
    KeySettings,
    KeyState,
    KeyStream,
    StoredKey,
    settings_document,
    timestamp,
)
from keyguard.storage import (
    AuditQuery,
    ImportResult,
    KeyRewrite,
    NewKey,
    import_document,
    recorded_address,
    sort_batch,
)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class MemoryStore:
    """Everything in dicts behind one lock; lost when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._accounts: dict[int, Account] = {}
        self._keys: dict[int, StoredKey] = {}
        self._digests: set[bytes] = set()
        self._audit: list[AuditRecord] = []
        self._revision = 0
        self._secret_check: bytes | None = None
        # Change signals wait on it; a write wakes them when it moves the revision.
        self._revision_moved = threading.Condition(self._lock)
        self._delivery: Delivery | None = None  # None until first claimed
        self._lease: tuple[str, datetime] | None = None
        self._noted: dict[tuple[int, str], datetime | None] = {}  # (key, notice): for expiry
        # (key id, granularity, bucket start) -> (account id, a count per outcome)
        self._usage: dict[tuple[int, Granularity, datetime], tuple[int, tuple[int, ...]]] = {}

    def migrate(self) -> None:
        pass

    def recount_keys(self) -> None:
        pass  # counts are counted when asked

    def needs_migration(self) -> bool:
        return False

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass

    def change_signal(self) -> "MemoryChangeSignal":
        return MemoryChangeSignal(self)

    @property
    def revision(self) -> int:
        """The revision of the latest write."""
        return self._revision

    def wait_for_revision(self, seen: int, timeout: float) -> int:
        """The revision once it differs from ``seen``, or whatever it is after ``timeout`` s."""
        with self._revision_moved:
            self._revision_moved.wait_for(lambda: self._revision != seen, timeout)
            return self._revision

    def secret_check(self, proposed: bytes | None = None) -> bytes | None:
        with self._lock:
            if self._secret_check is None:
                self._secret_check = proposed
            return self._secret_check

    def replace_secret_check(self, value: bytes) -> None:
        with self._lock:
            self._secret_check = value

    # -- accounts -----------------------------------------------------------------

    def create_account(
        self,
        name: str,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> tuple[Account, StoredKey]:
        with self._lock:
            self._next_revision()
            account = Account(len(self._accounts) + 1, name, _now(), revision=self._revision)
            self._accounts[account.id] = account
            self._record(account.id, "account.create", actor, after={"name": name})
            return account, self._insert(account.id, digest, sealed_value, settings, actor)

    def list_accounts(self) -> list[Account]:
        with self._lock:
            return [a for a in self._accounts.values() if a.status is not AccountStatus.DELETED]

    def get_account(self, account_id: int) -> Account | None:
        account = self._accounts.get(account_id)
        if account is None or account.status is AccountStatus.DELETED:
            return None
        return account

    def set_account_status(
        self, account_id: int, status: AccountStatus, actor: Actor = CLI
    ) -> Account | None:
        with self._lock:
            account = self.get_account(account_id)
            if account is None:
                return None
            self._next_revision()
            changed = replace(account, status=status, revision=self._revision)
            self._accounts[account_id] = changed
            self._record(
                account_id,
                STATUS_ACTIONS[status],
                actor,
                before={"status": account.status.value},
                after={"status": status.value},
            )
            if status is AccountStatus.DELETED:
                for key in list(self._keys.values()):
                    if key.account_id == account_id and not key.deleted:
                        self._keys[key.id] = self._tombstone(key)
            return changed

    def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        with self._lock:
            found = [
                record
                for record in reversed(self._audit)
                if (query.account_id is None or record.account_id == query.account_id)
                and (query.key_id is None or record.key_id == query.key_id)
                and (query.action is None or record.action == query.action)
                and (query.since is None or record.occurred_at >= query.since)
                and (query.until is None or record.occurred_at < query.until)
            ]
            return found[query.offset : query.offset + query.limit], len(found)

    # -- keys -------------------------------------------------------------------

    def create_key(
        self,
        account_id: int,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> StoredKey:
        with self._lock:
            if account_id not in self._accounts:
                raise ValueError(f"no account {account_id}")
            self._next_revision()
            return self._insert(account_id, digest, sealed_value, settings, actor)

    def import_keys(
        self, account_id: int, keys: Sequence[NewKey], actor: Actor = CLI
    ) -> ImportResult:
        with self._lock:
            wanted = {key.digest for key in keys}
            held = {k.digest: k.account_id for k in self._keys.values() if k.digest in wanted}
            fresh, existing, elsewhere = sort_batch(account_id, keys, held)
            if not fresh:
                return ImportResult([], existing, elsewhere)
            self._next_revision()
            created: list[int] = []
            for position in fresh:
                key = keys[position]
                self._digests.add(key.digest)
                stored = StoredKey(
                    id=len(self._keys) + 1,
                    account_id=account_id,
                    digest=key.digest,
                    sealed_value=key.sealed_value,
                    settings=key.settings,
                    created_at=_now(),
                    revision=self._revision,
                    changed_at=datetime.now(UTC),
                    imported=key.imported,
                )
                self._keys[stored.id] = stored
                created.append(stored.id)
            result = ImportResult(created, existing, elsewhere)
            self._record(account_id, "key.import", actor, after=import_document(result))
            return result

    def list_keys(
        self,
        account_id: int,
        label: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[StoredKey]:
        needle = label.casefold() if label else ""
        with self._lock:
            found = [
                key
                for key in self._keys.values()
                if key.account_id == account_id
                and not key.deleted
                and needle in key.settings.label.casefold()
            ]
        return found[offset : None if limit is None else offset + limit]

    def count_keys(self, account_id: int, label: str | None = None) -> int:
        return len(self.list_keys(account_id, label))

    def get_key(self, account_id: int, key_id: int) -> StoredKey | None:
        key = self._keys.get(key_id)
        if key is None or key.account_id != account_id or key.deleted:
            return None
        return key

    def update_key(
        self,
        account_id: int,
        key_id: int,
        changes: KeyChanges,
        actor: Actor = CLI,
        action: Action = "key.update",
    ) -> StoredKey | None:
        with self._lock:
            key = self.get_key(account_id, key_id)
            if key is None:
                return None
            refuse_activation(key, changes)
            self._next_revision()
            settings = apply(key.settings, changes)
            key = self._rewrite_settings(key, settings, actor, action)
            if changes.credits:
                refill = settings.refill
                period = period_of(None if refill is None else refill.interval, _now())
                key = replace(key, credits_epoch=key.credits_epoch + 1, credits_period=period)
                self._keys[key.id] = key
            return key

    # -- usage credits ------------------------------------------------------------

    def lease_credits(self, wanted: Mapping[int, int], now: datetime) -> dict[int, CreditGrant]:
        grants: dict[int, CreditGrant] = {}
        with self._lock:
            for key_id, count in wanted.items():
                key = self._keys.get(key_id)
                if key is None or key.deleted or key.settings.remaining is None:
                    continue
                settings = key.settings
                refill = settings.refill
                if refill is not None and key.credits_period < period_of(refill.interval, now):
                    key = replace(
                        key,
                        settings=replace(settings, remaining=refill.amount),
                        credits_period=period_of(refill.interval, now),
                    )
                remaining = key.settings.remaining
                assert remaining is not None
                granted = min(count, remaining)
                left = remaining - granted
                key = replace(key, settings=replace(key.settings, remaining=left))
                self._keys[key_id] = key
                grants[key_id] = CreditGrant(granted, key.credits_epoch, key.credits_period, left)
        return grants

    def return_credits(self, returned: Mapping[int, CreditGrant]) -> None:
        with self._lock:
            for key_id, lease in returned.items():
                key = self._keys.get(key_id)
                if key is None or key.settings.remaining is None:
                    continue
                if (key.credits_epoch, key.credits_period) != (lease.epoch, lease.period):
                    continue
                remaining = key.settings.remaining + lease.granted
                self._keys[key_id] = replace(
                    key, settings=replace(key.settings, remaining=remaining)
                )

    def roll_key(
        self,
        account_id: int,
        key_id: int,
        digest: bytes,
        sealed_value: bytes,
        grace_until: datetime,
        actor: Actor = CLI,
    ) -> tuple[StoredKey, StoredKey] | None:
        with self._lock:
            key = self.get_key(account_id, key_id)
            if key is None:
                return None
            old_settings = rolled_settings(key.settings, grace_until, datetime.now(UTC))
            self._next_revision()
            new = self._insert(
                account_id, digest, sealed_value, successor_settings(key), actor, key.id
            )
            noted = {"rolled_to": new.id}
            return self._rewrite_settings(key, old_settings, actor, "key.roll", noted), new

    def delete_key(self, account_id: int, key_id: int, actor: Actor = CLI) -> StoredKey | None:
        with self._lock:
            key = self.get_key(account_id, key_id)
            if key is None:
                return None
            self._next_revision()
            tombstone = self._tombstone(key)
            self._keys[key_id] = tombstone
            self._record(
                account_id, "key.delete", actor, key_id, before=settings_document(key.settings)
            )
            return tombstone

    def leak_keys(self, leaks: Sequence[Leak], actor: Actor = CLI) -> list[StoredKey | None]:
        with self._lock:  # one revision for them all: a memory store has no transactions
            ids = {key.digest: key.id for key in self._keys.values()}
            revision = self._revision + 1
            stored: list[StoredKey | None] = []
            for leak in leaks:
                key_id = next(filter(None, map(ids.get, leak.digests)), None)
                key = None if key_id is None else self._keys[key_id]
                if key is not None and is_revocable(key):
                    self._revision = revision
                    key = self._leak(key, leak.found, actor)
                stored.append(key)
            return stored

    def _leak(self, key: StoredKey, found: Mapping[str, Any], actor: Actor) -> StoredKey:
        leaked_at = _now()
        noted = {"leaked_at": timestamp(leaked_at), **found}
        key = self._rewrite_settings(key, leaked_settings(key.settings), actor, "key.leak", noted)
        self._keys[key.id] = key = replace(key, leaked_at=leaked_at)
        return key

    def newest_revision(self) -> int:
        return self._revision

    def changes_since(self, revision: int) -> ChangeFeed:
        with self._lock:
            keys = [
                key
                for key in self._keys.values()
                if key.revision > revision and not (revision == 0 and key.deleted)
            ]
            accounts = [
                account
                for account in self._accounts.values()
                if account.revision > revision
                and not (revision == 0 and account.status is AccountStatus.ACTIVE)
            ]
            keys.sort(key=lambda key: key.revision)
            return ChangeFeed(self._revision, keys, accounts)

    @contextmanager
    def stream_changes(self, revision: int) -> Iterator[KeyStream]:
        feed = self.changes_since(revision)
        states: Iterator[KeyState] = map(KeyState.of, feed.keys)
        if revision == 0:  # as a database's first load: no change times
            states = (state._replace(changed_at=None) for state in states)
        yield KeyStream(feed.revision, feed.accounts, states)

    @contextmanager
    def stream_digests(self) -> Iterator[DigestStream]:
        feed = self.changes_since(0)
        digests = [(key.digest, key.imported) for key in feed.keys]
        yield DigestStream(feed.revision, feed.accounts, len(digests), iter(digests))

    def key_states(
        self, digests: Collection[bytes] = (), ids: Collection[int] = ()
    ) -> list[KeyState]:
        wanted_digests, wanted_ids = set(digests), set(ids)
        with self._lock:
            return [
                KeyState.of(key)
                for key in self._keys.values()
                if not key.deleted and (key.digest in wanted_digests or key.id in wanted_ids)
            ]

    def rewrite_keys(self, rewrites: Sequence[KeyRewrite]) -> int:
        with self._lock:
            applied = [
                (key, rewrite)
                for rewrite in rewrites
                if (key := self._keys.get(rewrite.key_id)) is not None
                and not key.deleted
                and key.digest == rewrite.old_digest
            ]
            if any(rewrite.digest in self._digests for _key, rewrite in applied):
                raise ValueError("duplicate key digest")  # and nothing was changed
            self._next_revision()
            for key, rewrite in applied:
                self._digests.discard(key.digest)
                self._digests.add(rewrite.digest)
                self._keys[key.id] = replace(
                    key,
                    digest=rewrite.digest,
                    sealed_value=rewrite.sealed_value,
                    revision=self._revision,
                    changed_at=datetime.now(UTC),
                )
            return len(applied)

    def record_usage(self, used: Mapping[int, datetime], settle: float = 0.0) -> None:
        with self._lock:
            for key_id, when in used.items():
                key = self._keys.get(key_id)
                before = when - timedelta(seconds=settle)
                if key is not None and (key.last_used_at is None or key.last_used_at < before):
                    self._keys[key_id] = replace(key, last_used_at=when)

    # -- webhook delivery ---------------------------------------------------------

    def claim_delivery(self, owner: str, now: datetime, lease: timedelta) -> Delivery | None:
        with self._lock:
            if self._lease is not None and self._lease[0] != owner and self._lease[1] > now:
                return None
            self._lease = (owner, now + lease)
            if self._delivery is None:
                self._delivery = Delivery(len(self._audit))
            return self._delivery

    def release_delivery(self, owner: str) -> None:
        with self._lock:
            if self._lease is not None and self._lease[0] == owner:
                self._lease = None

    def pending_events(self, after: int, actions: Collection[str], limit: int) -> list[AuditRecord]:
        with self._lock:
            return [record for record in self._audit[after:] if record.action in actions][:limit]

    def advance_delivery(self, through: int) -> None:
        with self._lock:
            if self._delivery is None or self._delivery.delivered_through < through:
                self._delivery = Delivery(through)

    def delay_delivery(self, owner: str, event: int, attempts: int, retry_at: datetime) -> None:
        with self._lock:
            if self._delivery is not None and self._lease is not None and self._lease[0] == owner:
                self._delivery = replace(
                    self._delivery, retry_event=event, attempts=attempts, retry_at=retry_at
                )

    def delivery_backlog(self, actions: Collection[str]) -> int:
        with self._lock:
            if self._delivery is None:
                return 0
            after = self._audit[self._delivery.delivered_through :]
            return sum(1 for record in after if record.action in actions)

    def note_expiries(self, now: datetime, warning: timedelta, since: Sweep | None) -> Sweep | None:
        del since  # every key is at hand
        with self._lock:
            for key in list(self._keys.values()):
                if key.deleted or key.leaked_at is not None:
                    continue
                expires_at = key.settings.expires_at
                warned = self._noted.get((key.id, "key.expiring"))
                expired = self._noted.get((key.id, "key.expire"))
                notice = expiry_notice(expires_at, now, warning, warned, expired)
                if notice is not None:
                    self._noted[key.id, notice] = expires_at
                    after = settings_document(key.settings)
                    self._record(key.account_id, notice, KEYGUARD, key.id, after=after)
            return Sweep(now, self._revision)

    # -- usage counts -------------------------------------------------------------

    def record_counts(self, counts: Mapping[int, Sequence[int]], at: datetime) -> None:
        with self._lock:
            for key_id, added in counts.items():
                for granularity in Granularity:
                    bucket = (key_id, granularity, granularity.floor(at))
                    account_id, held = self._usage.get(bucket, (added[0], (0,) * len(OUTCOMES)))
                    summed = tuple(a + b for a, b in zip(held, added[1:], strict=True))
                    self._usage[bucket] = (account_id, summed)

    def usage_series(
        self,
        account_id: int,
        key_id: int,
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[datetime, tuple[int, ...]]:
        return {
            start: counts
            for (key, _, start), (owner, counts) in self._buckets(granularity, since, until)
            if key == key_id and owner == account_id
        }

    def usage_of_keys(
        self,
        account_id: int,
        key_ids: Collection[int],
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[int, dict[datetime, tuple[int, ...]]]:
        wanted = set(key_ids)
        found: dict[int, dict[datetime, tuple[int, ...]]] = {}
        for (key_id, _, start), (owner, counts) in self._buckets(granularity, since, until):
            if key_id in wanted and owner == account_id:
                found.setdefault(key_id, {})[start] = counts
        return found

    def usage_totals(
        self, account_id: int, granularity: Granularity, since: datetime, until: datetime
    ) -> dict[int, tuple[int, ...]]:
        found: dict[int, list[tuple[int, ...]]] = {}
        for (key_id, _, _), (owner, counts) in self._buckets(granularity, since, until):
            if owner == account_id:
                found.setdefault(key_id, []).append(counts)
        return {key_id: totals(rows) for key_id, rows in sorted(found.items())}

    def prune_usage(self, before: Mapping[Granularity, datetime]) -> int:
        with self._lock:
            old = [bucket for bucket in self._usage if bucket[2] < before.get(bucket[1], bucket[2])]
            for bucket in old:
                del self._usage[bucket]
            return len(old)

    def _buckets(
        self, granularity: Granularity, since: datetime, until: datetime
    ) -> list[tuple[tuple[int, Granularity, datetime], tuple[int, tuple[int, ...]]]]:
        first = granularity.floor(since)
        with self._lock:
            return [
                (bucket, held)
                for bucket, held in self._usage.items()
                if bucket[1] is granularity and first <= bucket[2] < until
            ]

    # -- internals --------------------------------------------------------------

    def _next_revision(self) -> None:
        """Move to the revision of a write under way (the lock is held), and wake the
        change signals: they return once the write releases the lock."""
        self._revision += 1
        self._revision_moved.notify_all()

    def _rewrite_settings(
        self,
        key: StoredKey,
        settings: KeySettings,
        actor: Actor,
        action: Action,
        noted: Mapping[str, Any] | None = None,
    ) -> StoredKey:
        updated = replace(
            key, settings=settings, revision=self._revision, changed_at=datetime.now(UTC)
        )
        self._keys[key.id] = updated
        before = settings_document(key.settings)
        after = {**settings_document(settings), **(noted or {})}
        self._record(key.account_id, action, actor, key.id, before=before, after=after)
        return updated

    def _insert(
        self,
        account_id: int,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor,
        rolled_from: int | None = None,
    ) -> StoredKey:
        if digest in self._digests:
            raise ValueError("duplicate key digest")
        self._digests.add(digest)
        key = StoredKey(
            id=len(self._keys) + 1,
            account_id=account_id,
            digest=digest,
            sealed_value=sealed_value,
            settings=settings,
            created_at=_now(),
            revision=self._revision,
            changed_at=datetime.now(UTC),
            rolled_from=rolled_from,
            credits_period=period_of(settings.refill.interval if settings.refill else None, _now()),
        )
        self._keys[key.id] = key
        after = settings_document(settings)
        if rolled_from is not None:
            after["rolled_from"] = rolled_from
        self._record(account_id, "key.create", actor, key.id, after=after)
        return key

    def _tombstone(self, key: StoredKey) -> StoredKey:
        return replace(
            key,
            deleted=True,
            sealed_value=b"",
            revision=self._revision,
            changed_at=datetime.now(UTC),
        )

    def _record(
        self,
        account_id: int,
        action: Action,
        actor: Actor,
        key_id: int | None = None,
        *,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        actor = replace(actor, ip=recorded_address(actor.ip))
        self._audit.append(
            AuditRecord(
                len(self._audit) + 1, account_id, _now(), action, key_id, actor, before, after
            )
        )


class MemoryChangeSignal:
    """Wakes its waiter when its :class:`MemoryStore` has changed since the last wake."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._seen = store.revision

    def wait(self, timeout: float) -> bool:
        seen, self._seen = self._seen, self._store.wait_for_revision(self._seen, timeout)
        return self._seen != seen

    def close(self) -> None:
        pass
