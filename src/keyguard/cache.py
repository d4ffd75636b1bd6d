"""The in-memory snapshot of every live key, by digest.

Decisions read it without locks or I/O. It is kept current three ways: a
management call in this process puts its result in at once; a periodic
refresh reads the store's change feed; and every entry remembers its
revision, so a late, older copy of a key can never overwrite a newer one.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from keyguard.domain.network import AllowList, parse_networks
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.records import Account, AccountStatus, StoredKey
from keyguard.domain.scopes import Level
from keyguard.storage import ChangeSignal, Store

log = logging.getLogger("keyguard.cache")


@dataclass(frozen=True, slots=True)
class CachedKey:
    """What a decision needs to know about a key, parsed once."""

    key_id: int
    account_id: int
    active: bool  # false for a leaked key too, whatever its settings say
    networks: AllowList | None  # None: not restricted
    scopes_enabled: bool
    levels: Mapping[str, Level] = field(default_factory=dict)
    # A POSIX timestamp: decisions compare it with the clock, so a key expires on
    # every process at its second, with no refresh or write needed then.
    expires: float | None = None
    ratelimit: RateLimit | None = None  # None: the decision never meters this key
    # The epoch of the key's credits (leases older than it are dropped); None:
    # unlimited, and the decision spends nothing.
    credits: int | None = None
    refill_interval: str | None = None

    @classmethod
    def of(cls, key: StoredKey) -> "CachedKey":
        settings = key.settings
        return cls(
            key_id=key.id,
            account_id=key.account_id,
            active=settings.active and key.leaked_at is None,
            networks=AllowList.of(parse_networks(settings.permitted_ips))
            if settings.restricted
            else None,
            scopes_enabled=settings.scopes_enabled,
            levels=dict(settings.scopes),
            expires=None if settings.expires_at is None else settings.expires_at.timestamp(),
            ratelimit=settings.ratelimit,
            credits=None if settings.remaining is None else key.credits_epoch,
            refill_interval=None if settings.refill is None else settings.refill.interval,
        )


class KeyCache:
    """Live keys by digest, plus the revision the snapshot has reached."""

    def __init__(self, store: Store, observe_lag: Callable[[float], None] | None = None) -> None:
        self._store = store
        self._observe_lag = observe_lag
        self._lock = threading.Lock()
        self._by_digest: dict[bytes, CachedKey] = {}
        self._revisions: dict[int, int] = {}  # key id -> revision held, tombstones too
        self._digests: dict[int, bytes] = {}  # key id -> digest it is held under
        self._credited: dict[int, CachedKey] = {}  # live keys with credits, by id
        self._account_revisions: dict[int, int] = {}
        # Accounts whose keys must fail: suspended or deleted. Decisions check it.
        self.blocked_accounts: set[int] = set()
        self.revision = 0
        self.refreshed_at: float | None = None  # time.monotonic() of the last refresh
        self.store_reachable = False  # did the last refresh reach the store?

    def __len__(self) -> int:
        return len(self._by_digest)

    def get(self, digest: bytes) -> CachedKey | None:
        return self._by_digest.get(digest)

    def by_id(self, key_id: int) -> CachedKey | None:
        """The live key with this id, or None once it is deleted (or was never seen)."""
        digest = self._digests.get(key_id)
        return None if digest is None else self._by_digest.get(digest)

    def live_keys(self) -> list[CachedKey]:
        """Every live key in the snapshot, as of now."""
        with self._lock:
            return list(self._by_digest.values())

    def credited(self) -> list[CachedKey]:
        """Every live key with credits, as of now."""
        with self._lock:
            return list(self._credited.values())

    def put(self, key: StoredKey) -> None:
        """Take in a key written by this process; older copies are ignored."""
        with self._lock:
            self._apply(key)

    def put_account(self, account: Account) -> None:
        """Take in an account status written by this process."""
        with self._lock:
            self._apply_account(account)

    def refresh(self) -> int:
        """Read every change since the last refresh; return how many were applied."""
        first_load = self.revision == 0
        try:
            changes = self._store.changes_since(self.revision)
        except Exception:
            self.store_reachable = False
            raise
        with self._lock:
            for account in changes.accounts:
                self._apply_account(account)
            applied = [key for key in changes.keys if self._apply(key)]
            self.revision = max(self.revision, changes.revision)
            self.refreshed_at = time.monotonic()
            self.store_reachable = True
        if self._observe_lag is not None and not first_load:  # a first load is no propagation
            now = datetime.now(UTC)
            for key in applied:
                if key.changed_at is not None:
                    self._observe_lag((now - key.changed_at).total_seconds())
        return len(applied)

    @property
    def age(self) -> float | None:
        """Seconds since the last successful refresh."""
        return None if self.refreshed_at is None else time.monotonic() - self.refreshed_at

    def _apply_account(self, account: Account) -> None:
        if self._account_revisions.get(account.id, -1) >= account.revision:
            return
        self._account_revisions[account.id] = account.revision
        if account.status is AccountStatus.ACTIVE:
            self.blocked_accounts.discard(account.id)
        else:
            self.blocked_accounts.add(account.id)

    def _apply(self, key: StoredKey) -> bool:
        if self._revisions.get(key.id, -1) >= key.revision:
            return False
        self._revisions[key.id] = key.revision
        # A rotation of the server secret gives a key a new digest: the entry under
        # the old one must go, or the old digest would keep answering for the key.
        held = self._digests.pop(key.id, None)
        if held is not None and held != key.digest:
            self._by_digest.pop(held, None)
        self._credited.pop(key.id, None)
        if key.deleted:
            self._by_digest.pop(key.digest, None)
        else:
            self._by_digest[key.digest] = cached = CachedKey.of(key)
            self._digests[key.id] = key.digest
            if cached.credits is not None:
                self._credited[key.id] = cached
        return True


class ChangeFollower:
    """Refresh the snapshot as soon as the store signals a change.

    Runs beside the periodic refresh, which remains the guarantee: this only makes
    propagation faster than the polling interval.
    """

    def __init__(self, cache: KeyCache, signal: ChangeSignal) -> None:
        self._cache = cache
        self._signal = signal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyguard-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._signal.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._signal.wait(timeout=0.1) or self._stop.is_set():
                continue
            try:
                self._cache.refresh()
            except Exception as error:  # the periodic refresh will catch up
                log.warning(
                    "snapshot refresh after a change signal failed: %s", type(error).__name__
                )
