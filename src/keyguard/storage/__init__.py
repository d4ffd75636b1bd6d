"""Where keyguard keeps accounts and keys.

:class:`Store` is the one seam between keyguard and its database. Backends are
chosen by URL in :func:`open_store`; each passes the same contract suite
(``tests/storage/test_contract.py``).
"""

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from keyguard.domain.counts import Granularity
from keyguard.domain.credits import CreditGrant
from keyguard.domain.events import Delivery, Sweep
from keyguard.domain.fields import KeyChanges
from keyguard.domain.leaks import Leak
from keyguard.domain.records import (
    CLI,
    Account,
    AccountStatus,
    Action,
    Actor,
    AuditRecord,
    ChangeFeed,
    DigestStream,
    Imported,
    KeySettings,
    KeyState,
    KeyStream,
    StoredKey,
)
from keyguard.errors import ConfigurationError


class ChangeSignal(Protocol):
    """Wakes a waiting process when another one changed a key."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a change may have happened.

        After a lost connection it reconnects and answers True, since changes may
        have been missed meanwhile.
        """

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which audit records to read, newest first.

    ``account_id`` is one account's trail, deleted accounts included, or ``None``
    for every account's: the operator's view. It has no default, so that no caller
    reads every account's records by leaving it out.
    """

    account_id: int | None
    key_id: int | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    offset: int = 0
    limit: int = 25


@dataclass(frozen=True, slots=True)
class KeyRewrite:
    """A key's digest and sealed value under a new server secret, replacing ``old_digest``."""

    key_id: int
    old_digest: bytes
    digest: bytes
    sealed_value: bytes


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to import: its digest, its sealed value (``b""`` for a ``"sha256"`` key,
    whose secret was never known) and its settings."""

    digest: bytes
    sealed_value: bytes
    settings: KeySettings
    imported: Imported


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one batch of :meth:`Store.import_keys` did.

    ``created`` holds the new keys' ids in the batch's order; ``existing`` and
    ``elsewhere`` the positions in the batch of keys skipped because their digest is
    already a key of this account (or came earlier in the batch), or of another account.
    """

    created: list[int]
    existing: list[int]
    elsewhere: list[int]


def sort_batch(
    account_id: int, keys: Sequence[NewKey], held: Mapping[bytes, int]
) -> tuple[list[int], list[int], list[int]]:
    """The positions of ``keys`` that are new, already this account's, and another
    account's, given the account of each digest the database ``held``."""
    fresh: list[int] = []
    existing: list[int] = []
    elsewhere: list[int] = []
    seen: set[bytes] = set()
    for position, key in enumerate(keys):
        owner = held.get(key.digest)
        if owner is None and key.digest not in seen:
            fresh.append(position)
        elif owner is None or owner == account_id:
            existing.append(position)
        else:
            elsewhere.append(position)
        seen.add(key.digest)
    return fresh, existing, elsewhere


def import_document(result: ImportResult) -> dict[str, int]:
    """A ``key.import`` record's ``after``: how many keys, and which ids; no secret."""
    return {
        "imported": len(result.created),
        "first_key_id": min(result.created),
        "last_key_id": max(result.created),
        "skipped": len(result.existing),
        "skipped_elsewhere": len(result.elsewhere),
    }


MAX_ADDRESS_LENGTH = 64  # audit_log.ip
# Keys revoked per transaction by a report of leaks: a large report neither holds the
# write lock long nor pays a commit per key.
LEAK_BATCH = 500


def recorded_address(ip: str | None) -> str | None:
    """An actor's address as the audit trail keeps it.

    It is usually an address, but a trusted proxy may forward any text: that is
    kept as evidence, made printable (PostgreSQL stores no NUL) and cut to the
    column's length, rather than failing the change it records.
    """
    if ip is None:
        return None
    return "".join(char if char.isprintable() else "?" for char in ip[:MAX_ADDRESS_LENGTH])


class Store(Protocol):
    """Durable accounts, keys and their audit trail. Every method is one transaction,
    and every change writes its audit record in that same transaction."""

    def migrate(self) -> None:
        """Bring the schema up to date."""

    def needs_migration(self) -> bool:
        """Whether ``migrate`` has work to do: no schema yet, or an older one.

        A newer schema than this version knows is no reason: migrations keep the
        running version working during a rolling deploy.
        """

    def recount_keys(self) -> None:
        """Count each account's live keys anew. Writes keep the counts; processes of a
        version before 0005 do not, so a rolling upgrade ends with a recount."""

    def ping(self) -> None:
        """Return when the database answers; raise ``StorageUnavailable`` if not."""

    def close(self) -> None: ...

    def create_account(
        self,
        name: str,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> tuple[Account, StoredKey]:
        """A new account together with its first key."""

    def list_accounts(self) -> list[Account]:
        """Every account that is not deleted, by id."""

    def get_account(self, account_id: int) -> Account | None:
        """The account, or ``None`` if there is none or it was deleted."""

    def set_account_status(
        self, account_id: int, status: AccountStatus, actor: Actor = CLI
    ) -> Account | None:
        """Suspend, resume or delete an account; deleting deletes its keys too."""

    def create_key(
        self,
        account_id: int,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> StoredKey: ...

    def import_keys(
        self, account_id: int, keys: Sequence[NewKey], actor: Actor = CLI
    ) -> ImportResult:
        """Add ``keys`` to an existing account in one transaction, all or nothing.

        A key whose digest the database already holds, deleted keys included, is
        skipped, never moved between accounts. The new keys carry the transaction's
        revision like any write, add to the account's key count, and are audited
        together as one ``key.import`` (counts and the range of ids, no secret). A
        batch with nothing new writes nothing.
        """

    def list_keys(
        self,
        account_id: int,
        label: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[StoredKey]:
        """The account's live keys by id, from the ``offset``-th, at most ``limit`` of
        them (``None``: all); ``label`` is a case-insensitive substring."""

    def count_keys(self, account_id: int, label: str | None = None) -> int:
        """How many keys ``list_keys`` would give without ``offset`` and ``limit``."""

    def get_key(self, account_id: int, key_id: int) -> StoredKey | None: ...

    def update_key(
        self,
        account_id: int,
        key_id: int,
        changes: KeyChanges,
        actor: Actor = CLI,
        action: Action = "key.update",
    ) -> StoredKey | None:
        """Apply ``changes`` atomically; ``None`` if the account has no such key;
        ``Conflict`` if they would activate a leaked key."""

    def roll_key(
        self,
        account_id: int,
        key_id: int,
        digest: bytes,
        sealed_value: bytes,
        grace_until: datetime,
        actor: Actor = CLI,
    ) -> tuple[StoredKey, StoredKey] | None:
        """Replace a key by a new one with the same settings (``digest`` and
        ``sealed_value`` are the new secret's); the old key now expires at
        ``grace_until``, or at its own expiry if sooner (a leaked key's successor is
        active: :func:`~keyguard.domain.leaks.successor_settings`). Both as stored afterwards,
        old first; ``None`` if the account has no such key; ``Conflict`` if it expired.
        Audited as ``key.create`` (naming ``rolled_from``) and ``key.roll``.
        """

    def delete_key(self, account_id: int, key_id: int, actor: Actor = CLI) -> StoredKey | None:
        """Revoke a key for good; its tombstone, or ``None`` if there was no such key."""

    def leak_keys(self, leaks: Sequence[Leak], actor: Actor = CLI) -> list[StoredKey | None]:
        """Revoke for good, as leaked, the key stored under one of each leak's digests,
        whatever its account: it becomes inactive with ``leaked_at`` set, audited as
        ``key.leak`` with the leak's ``found`` (where it was found) added to the
        record's ``after``. Keys are revoked in transactions of up to
        :data:`LEAK_BATCH`, each moving the revision once.

        For each leak, its key as stored afterwards. A key that leaked or was deleted
        before, or was named earlier in ``leaks``, is returned as it is: nothing is
        written or audited again. ``None`` where no key has one of the digests.
        """

    def lease_credits(self, wanted: Mapping[int, int], now: datetime) -> dict[int, CreditGrant]:
        """Take up to ``wanted[key_id]`` credits of each key, for a process to spend.

        First the refill of the period holding ``now`` is made where it is due. Each
        key takes what it has if it has fewer; a key with no credits left gets a
        grant of 0, and unlimited or deleted keys are absent. Each grant is one
        atomic decrement: processes leasing at once never take more than there is.
        It moves no revision.
        """

    def return_credits(self, returned: Mapping[int, CreditGrant]) -> None:
        """Give back ``granted`` unspent credits of each key, unless the key's credits
        changed (another epoch) or were refilled (another period) since the lease:
        then they are dropped, never added to the new amount."""

    def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        """One page of the audit records that match, and how many match in all."""

    def newest_revision(self) -> int:
        """The newest revision: where a change feed read now would end."""

    def changes_since(self, revision: int) -> ChangeFeed:
        """Every key and account changed after ``revision``, up to the newest revision.

        From revision 0 (a first load): live keys, and accounts that are not active.
        Later: deleted keys too (``deleted=True``), so that snapshots drop them.
        """

    def stream_changes(self, revision: int) -> AbstractContextManager[KeyStream]:
        """What :meth:`changes_since` returns, as :class:`KeyState` records in revision
        order, read from the database while the block iterates them: a first load of
        millions of keys holds one batch of rows at a time, never a list of them all.
        Each key comes once, in no particular order; a first load (from revision 0)
        carries no ``changed_at``, since it is no propagation."""

    def stream_digests(self) -> AbstractContextManager[DigestStream]:
        """Every live key's digest (and how it was imported, if it was), with the
        newest revision and the accounts that are not active, read while the block
        iterates them: a bounded snapshot's first load, which holds keys only
        once they are used."""

    def key_states(
        self, digests: Collection[bytes] = (), ids: Collection[int] = ()
    ) -> list[KeyState]:
        """The live keys with these digests or these ids, as a snapshot holds them
        (``changed_at`` included): one indexed read."""

    def record_usage(self, used: Mapping[int, datetime], settle: float = 0.0) -> None:
        """Move ``last_used_at`` forward, never back, for each key id given; skip a
        key whose stored time is within ``settle`` seconds of the new one."""

    def record_counts(self, counts: Mapping[int, Sequence[int]], at: datetime) -> None:
        """Add request counts to the minute, hour and day buckets holding ``at``.

        ``counts`` maps a key id to its account id followed by one count per
        :class:`~keyguard.domain.counts.Outcome`; processes add up, never overwrite.
        """

    def usage_series(
        self,
        account_id: int,
        key_id: int,
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[datetime, tuple[int, ...]]:
        """A key's counts by bucket start, for buckets from ``since`` up to ``until``;
        buckets with no count are absent."""

    def usage_of_keys(
        self,
        account_id: int,
        key_ids: Collection[int],
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[int, dict[datetime, tuple[int, ...]]]:
        """``usage_series`` of several of the account's keys at once, in one read: each
        key with counts in the span, and its counts by bucket start."""

    def usage_totals(
        self, account_id: int, granularity: Granularity, since: datetime, until: datetime
    ) -> dict[int, tuple[int, ...]]:
        """Each of the account's keys with counts in that span, and its counts added up."""

    def prune_usage(self, before: Mapping[Granularity, datetime]) -> int:
        """Delete buckets of each granularity that start before its time; how many went."""

    def change_signal(self) -> ChangeSignal | None:
        """A push channel for changes, if the backend has one; polling covers the rest."""

    def secret_check(self, proposed: bytes | None = None) -> bytes | None:
        """The check value of the server secret the database was set up with.

        If there is none yet and ``proposed`` is given, ``proposed`` becomes it: of
        processes starting together, the first to propose one wins. It is no change
        to keys or accounts and moves no revision.
        """

    def replace_secret_check(self, value: bytes) -> None:
        """Make ``value`` the check value, whatever it was: the end of a secret rotation."""

    def rewrite_keys(self, rewrites: Sequence[KeyRewrite]) -> int:
        """Give keys their digest and sealed value under a new server secret, in one
        transaction that moves the revision, so change feeds carry the new digests.

        A key is rewritten only while it is live and still has ``old_digest``; one
        deleted or rewritten meanwhile is left alone. Returns how many were rewritten.
        Settings, ``last_used_at`` and the audit trail are untouched: the key is the same.
        """

    # -- webhook delivery: the audit trail is the outbox ------------------------

    def claim_delivery(self, owner: str, now: datetime, lease: timedelta) -> Delivery | None:
        """Hold the delivery lease until ``now + lease``, if it is free, lapsed or
        ``owner``'s; the delivery state then, ``None`` while another process holds it.

        A process that waits for another's lease writes nothing. The first claim
        ever starts delivery after the newest audit record.
        """

    def release_delivery(self, owner: str) -> None:
        """Give the lease up at once, if ``owner`` holds it: another may take over."""

    def pending_events(self, after: int, actions: Collection[str], limit: int) -> list[AuditRecord]:
        """Up to ``limit`` audit records with one of ``actions`` and an id above
        ``after``, in the order they were committed."""

    def advance_delivery(self, through: int) -> None:
        """Mark the events up to audit id ``through`` delivered, and forget the retry
        of the one that was failing. It never moves back."""

    def delay_delivery(self, owner: str, event: int, attempts: int, retry_at: datetime) -> None:
        """Note that ``event`` failed ``attempts`` times and is due again at
        ``retry_at``; only while ``owner`` holds the lease."""

    def delivery_backlog(self, actions: Collection[str]) -> int:
        """How many events (records with one of ``actions``) are not delivered yet."""

    def note_expiries(self, now: datetime, warning: timedelta, since: Sweep | None) -> Sweep | None:
        """Audit ``key.expiring`` for each live key that expires within ``warning`` of
        ``now``, and ``key.expire`` for each whose expiry has come, once per key and
        expiry time (:func:`~keyguard.domain.events.expiry_notice`); as keyguard
        itself, each in the transaction that remembers it was given.

        ``since`` is the previous sweep's answer: only keys that came due or changed
        after it are looked at (``None``: every key). It answers ``since`` again when
        it stopped at a batch's end, to look again. Leaked keys get no notices.
        """


def open_store(url: str, pool_size: int = 5, setting: str = "KEYGUARD_DATABASE_URL") -> Store:
    """The backend for a database URL: ``postgresql://…``, ``sqlite:///path``, ``memory://``.

    ``setting`` names where the URL comes from, for errors that say what to check.
    """
    scheme = url.partition(":")[0].partition("+")[0]
    if scheme == "memory":
        from keyguard.storage.memory import MemoryStore

        return MemoryStore()
    if scheme in ("sqlite", "postgresql", "postgres"):
        from sqlalchemy.exc import ArgumentError

        from keyguard.storage.sql import SQLStore

        try:
            return SQLStore(url, pool_size, setting)
        except (ArgumentError, ValueError) as error:
            raise ConfigurationError(f"Invalid database URL: {error}") from None
    raise ConfigurationError(
        f"Unsupported database URL scheme {scheme!r}: use postgresql://user@host/db, "
        "sqlite:///path/to/keyguard.db or memory://."
    )


__all__ = [
    "AuditQuery",
    "ChangeSignal",
    "ImportResult",
    "KeyRewrite",
    "NewKey",
    "Store",
    "import_document",
    "open_store",
    "recorded_address",
    "sort_batch",
]
