"""Management use cases: accounts and their keys.

The HTTP API and the CLI both call :class:`KeyService`; neither talks to the
store directly. Every write goes to the store first and then into this process's
key snapshot, so the very next decision here sees it.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from keyguard.cache import Snapshot
from keyguard.config import SecretDisplay
from keyguard.credits import CreditLeases
from keyguard.domain import keys
from keyguard.domain.counts import MAX_POINTS, Granularity, Point, dense_series, points_between
from keyguard.domain.fields import (
    MAX_LABEL_LENGTH,
    KeyChanges,
    is_clean_text,
    parse_create,
    parse_filter,
    parse_roll,
    parse_update,
    settings_for_new_key,
)
from keyguard.domain.leaks import Leak
from keyguard.domain.records import (
    CLI,
    Account,
    AccountStatus,
    Action,
    Actor,
    AuditRecord,
    KeySettings,
    StoredKey,
)
from keyguard.domain.scanning import Match
from keyguard.domain.scopes import ScopeGroups
from keyguard.errors import InvalidInput, NotFound
from keyguard.storage import AuditQuery, Store
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault

MAX_ACCOUNT_NAME_LENGTH = 255
DEFAULT_RETENTION = {
    Granularity.MINUTE: timedelta(days=7),
    Granularity.HOUR: timedelta(days=90),
    Granularity.DAY: timedelta(days=730),
}


@dataclass(frozen=True, slots=True)
class Span:
    """From ``since`` (inclusive) to ``until`` (exclusive), in UTC."""

    since: datetime
    until: datetime


# How tables show the empty value of a key imported by its SHA-256 digest.
NOT_DISPLAYABLE = "(SHA-256 digest only)"


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as an account sees it: the secret as displayed (``""`` for a key imported
    by its SHA-256 digest, whose secret keyguard never knew), use as last noted."""

    key: StoredKey
    value: str
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of an account's keys, and how many keys all its pages hold."""

    views: list[KeyView]
    total: int


class KeyService:
    """Accounts and keys, validated, stored and reflected in the snapshot."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        cache: Snapshot,
        usage: UsageRecorder,
        *,
        groups: ScopeGroups,
        prefix: str = "kg",
        display: SecretDisplay = SecretDisplay.FULL,
        retention: Mapping[Granularity, timedelta] | None = None,
        credits: CreditLeases | None = None,
    ) -> None:
        self.store = store
        self.groups = groups
        self._vault = vault
        self._cache = cache
        self._usage = usage
        self._prefix = prefix
        self._display = display
        self._retention = dict(retention or DEFAULT_RETENTION)
        self._credits = credits

    # -- accounts -----------------------------------------------------------------

    def create_account(self, name: object, actor: Actor = CLI) -> tuple[Account, KeyView]:
        """A new account with its first, full-access key; the secret shown once."""
        if not isinstance(name, str) or not is_clean_text(name):
            raise InvalidInput.parameter("name")
        if len(name) > MAX_ACCOUNT_NAME_LENGTH:
            raise InvalidInput(
                f"Name is too long (maximum is {MAX_ACCOUNT_NAME_LENGTH} characters)", 422
            )
        token, digest, sealed = self._new_secret()
        label = f"{name} full access"[:MAX_LABEL_LENGTH]
        account, key = self.store.create_account(
            name, digest, sealed, KeySettings(label=label), actor
        )
        self._cache.put(key)
        return account, KeyView(key, token, None)

    def list_accounts(self) -> list[Account]:
        return self.store.list_accounts()

    def get_account(self, account_id: int) -> Account:
        account = self.store.get_account(account_id)
        if account is None:
            raise NotFound()
        return account

    def set_account_status(
        self, account_id: int, status: AccountStatus, actor: Actor = CLI
    ) -> Account:
        """Suspend (every key fails with 401), resume, or delete an account."""
        account = self.store.set_account_status(account_id, status, actor)
        if account is None:
            raise NotFound()
        self._cache.put_account(account)
        return account

    def audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        parse_filter("action", query.action)
        return self.store.list_audit(query)

    # -- keys -------------------------------------------------------------------

    def list_keys(self, account_id: int, label: str | None = None) -> list[KeyView]:
        label = parse_filter("label", label)
        return [self._view(key) for key in self.store.list_keys(account_id, label)]

    def page_of_keys(
        self, account_id: int, label: str | None, number: int, per_page: int
    ) -> KeyPage:
        """Page ``number`` (from 1) of ``per_page`` keys, as ``list_keys`` orders them."""
        label = parse_filter("label", label)
        found = self.store.list_keys(account_id, label, (number - 1) * per_page, per_page)
        total = self.store.count_keys(account_id, label)
        return KeyPage([self._view(key) for key in found], total)

    def get_key(self, account_id: int, key_id: int) -> KeyView:
        return self._view(self._existing(account_id, key_id))

    def create_key(self, account_id: int, body: object, actor: Actor = CLI) -> KeyView:
        settings = settings_for_new_key(parse_create(body, self.groups))
        self.get_account(account_id)
        token, digest, sealed = self._new_secret()
        key = self.store.create_key(account_id, digest, sealed, settings, actor)
        self._cache.put(key)
        self._prime(key)
        return KeyView(key, token, None)

    def update_key(self, account_id: int, key_id: int, body: object, actor: Actor = CLI) -> KeyView:
        changes = parse_update(body, self.groups)
        return self._view(self._update(account_id, key_id, changes, actor, "key.update"))

    def set_active(self, account_id: int, key_id: int, active: bool, actor: Actor = CLI) -> None:
        action: Action = "key.activate" if active else "key.deactivate"
        self._update(account_id, key_id, KeyChanges(active=active), actor, action)

    def roll_key(
        self, account_id: int, key_id: int, body: object, actor: Actor = CLI
    ) -> tuple[KeyView, KeyView]:
        """Replace a key by a new one; the old one works until the grace period ends.

        The old key as it now is, then the new one with its secret shown once.
        """
        grace = parse_roll(body)
        token, digest, sealed = self._new_secret()
        grace_until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=grace)
        rolled = self.store.roll_key(account_id, key_id, digest, sealed, grace_until, actor)
        if rolled is None:
            raise NotFound()
        old, new = rolled
        self._cache.put(old)
        self._cache.put(new)
        return self._view(old), KeyView(new, token, None)

    def delete_key(self, account_id: int, key_id: int, actor: Actor = CLI) -> None:
        tombstone = self.store.delete_key(account_id, key_id, actor)
        if tombstone is None:
            raise NotFound()
        self._cache.put(tombstone)

    def report_leaks(self, matches: Sequence[Match], actor: Actor) -> list[bool]:
        """Revoke, as leaked, every key among the tokens a secret scanner found in public.

        For each match, whether its token is a key of this keyguard: one revoked now,
        or earlier (a report sent again changes nothing), or deleted. The key is looked
        up in the store, not in this process's snapshot, so that a key made a moment
        ago by another process is found too.
        """
        leaks = [self._leak(match) for match in matches]
        named = [leak for leak in leaks if leak is not None]
        keys = iter(self.store.leak_keys(named, actor))
        revoked = [None if leak is None else next(keys) for leak in leaks]
        for key in revoked:
            if key is not None:
                self._cache.put(key)
        return [key is not None for key in revoked]

    # -- usage counts -------------------------------------------------------------

    def usage_series(
        self, account_id: int, key_id: int, granularity: Granularity, span: Span
    ) -> list[Point]:
        """A key's counts, a point per bucket of the span (zeros where none was kept)."""
        self._existing(account_id, key_id)
        since, until = self._checked(span, granularity)
        rows = self.store.usage_series(account_id, key_id, granularity, since, until)
        return dense_series(rows, granularity, since, until)

    def usage_of_keys(
        self, account_id: int, key_ids: Collection[int], granularity: Granularity, span: Span
    ) -> dict[int, list[Point]]:
        """``usage_series`` of several keys in one read; zeros for a key not the account's."""
        since, until = self._checked(span, granularity)
        found = self.store.usage_of_keys(account_id, key_ids, granularity, since, until)
        return {
            key_id: dense_series(found.get(key_id, {}), granularity, since, until)
            for key_id in key_ids
        }

    def usage_totals(
        self, account_id: int, span: Span
    ) -> tuple[Granularity, dict[int, tuple[int, ...]]]:
        """Each key's counts over the span, from the finest buckets still kept for its start."""
        now = datetime.now(UTC)
        granularity = next(
            (kept for kept in Granularity if span.since >= now - self._retention[kept]),
            Granularity.DAY,
        )
        since, until = self._checked(span, granularity, limit_points=False)
        return granularity, self.store.usage_totals(account_id, granularity, since, until)

    def prune_usage(self) -> int:
        """Delete counts older than their retention."""
        now = datetime.now(UTC)
        return self.store.prune_usage(
            {granularity: now - kept for granularity, kept in self._retention.items()}
        )

    @staticmethod
    def _checked(
        span: Span, granularity: Granularity, *, limit_points: bool = True
    ) -> tuple[datetime, datetime]:
        if span.since >= span.until:
            raise InvalidInput("From must be earlier than to", 422)
        if limit_points and points_between(span.since, span.until, granularity) > MAX_POINTS:
            raise InvalidInput(
                f"Too many points: at most {MAX_POINTS} {granularity.value}s per series", 422
            )
        return span.since, span.until

    # -- internals --------------------------------------------------------------

    def _leak(self, match: Match) -> Leak | None:
        """The digests a match may be stored under, or ``None`` if it is no key at all."""
        if not keys.is_well_formed(match.token):
            return None
        digests = [self._vault.digest(match.token)]
        if self._vault.previous is not None:  # a key not yet rewritten by a secret rotation
            digests.append(self._vault.previous.digest(match.token))
        return Leak(tuple(digests), match.where())

    def _update(
        self, account_id: int, key_id: int, changes: KeyChanges, actor: Actor, action: Action
    ) -> StoredKey:
        key = self.store.update_key(account_id, key_id, changes, actor, action)
        if key is None:
            raise NotFound()
        self._cache.put(key)
        if changes.credits:
            self._prime(key)
        return key

    def _prime(self, key: StoredKey) -> None:
        """Lease a credit of a key given credits, so that its first request here is
        answered at once (the other processes lease at their next round)."""
        if self._credits is not None and key.settings.remaining is not None:
            self._credits.prime(key.id)

    def _existing(self, account_id: int, key_id: int) -> StoredKey:
        key = self.store.get_key(account_id, key_id)
        if key is None:
            raise NotFound()
        return key

    def _new_secret(self) -> tuple[str, bytes, bytes]:
        token = keys.generate(self._prefix)
        digest = self._vault.digest(token)
        return token, digest, self._vault.seal(token, digest)

    def _view(self, key: StoredKey) -> KeyView:
        value = ""  # a key imported by SHA-256 digest: its secret was never known here
        if key.imported != "sha256":
            value = self._vault.unseal(key.sealed_value, key.digest)
        if value and self._display is SecretDisplay.MASKED:
            value = keys.mask(value)
        noted = self._usage.latest(key.id)
        last_used = key.last_used_at
        if noted is not None and (last_used is None or noted > last_used):
            last_used = noted
        return KeyView(key, value, last_used)
