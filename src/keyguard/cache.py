"""The in-memory snapshot of live keys, by digest: every one, or (bounded) those used lately.

Decisions read it without locks or I/O. It is kept current three ways: a
management call in this process puts its result in at once; a periodic
refresh reads the store's change feed; and every entry remembers its
revision, so a late, older copy of a key can never overwrite a newer one.
"""

import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from keyguard.domain.network import AllowList, parse_networks
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.records import Account, AccountStatus, KeyState, StoredKey
from keyguard.domain.scopes import Level
from keyguard.storage import ChangeSignal, Store

log = logging.getLogger("keyguard.cache")

_NARROW = 2**32 - 1  # the largest revision a 4-byte column holds
Shared = tuple[
    int,
    bool,
    tuple[str, ...] | None,
    tuple[tuple[str, Level], ...] | None,
    float | None,
    RateLimit | None,
    int | None,
    str | None,
]


def shared_of(key: KeyState) -> Shared:
    """What ``key`` shares with keys whose settings are the same: from ``account_id`` on."""
    return key[6:]


@dataclass(slots=True, eq=False)
class Profile:
    """What a decision needs to know about a key but its id, parsed once.

    Keys whose settings are the same share one profile: most of a snapshot's
    keys are a handful of profiles.
    """

    account_id: int
    active: bool  # false for a leaked key too, whatever its settings say
    networks: AllowList | None  # None: not restricted
    scopes_enabled: bool
    levels: Mapping[str, Level]
    # A POSIX timestamp: decisions compare it with the clock, so a key expires on
    # every process at its second, with no refresh or write needed then.
    expires: float | None
    ratelimit: RateLimit | None  # None: the decision never meters this key
    # The epoch of the key's credits (leases older than it are dropped); None:
    # unlimited, and the decision spends nothing.
    credits: int | None
    refill_interval: str | None
    shared: Shared  # what it was made of, and is found again by
    holders: int = 0  # keys that hold it; at none it is forgotten

    @classmethod
    def of(cls, shared: Shared) -> "Profile":
        account_id, active, networks, scopes, expires, ratelimit, credits, refill = shared
        return cls(
            account_id,
            active,
            None if networks is None else AllowList.of(parse_networks(networks)),
            scopes is not None,
            dict(scopes or ()),
            expires,
            ratelimit,
            credits,
            refill,
            shared,
        )


class CachedKey(NamedTuple):
    """A key as the snapshot answers for it: its id and its (shared) profile."""

    key_id: int
    profile: Profile

    @property
    def account_id(self) -> int:
        return self.profile.account_id

    @property
    def active(self) -> bool:
        return self.profile.active

    @property
    def networks(self) -> AllowList | None:
        return self.profile.networks

    @property
    def scopes_enabled(self) -> bool:
        return self.profile.scopes_enabled

    @property
    def levels(self) -> Mapping[str, Level]:
        return self.profile.levels

    @property
    def expires(self) -> float | None:
        return self.profile.expires

    @property
    def ratelimit(self) -> RateLimit | None:
        return self.profile.ratelimit

    @property
    def credits(self) -> int | None:
        return self.profile.credits

    @property
    def refill_interval(self) -> str | None:
        return self.profile.refill_interval


Found = tuple[int, Profile]  # what a lookup by digest answers: the key's id and profile


class Snapshot:
    """What every key snapshot shares: accounts, profiles, the change feed.

    A snapshot answers :meth:`get` by digest without locks or I/O. Subclasses
    decide which keys it holds: :class:`KeyCache` every live key,
    :class:`~keyguard.workingset.WorkingSet` those recently used.
    """

    bounded = False  # whether a key it does not hold may still exist (see may_hold)

    def __init__(self, store: Store, observe_lag: Callable[[float], None] | None = None) -> None:
        self._store = store
        self._observe_lag = observe_lag
        self._lock = threading.Lock()
        self._shared: dict[Shared, Profile] = {}
        self._credited: set[int] = set()  # live keys held with credits, by id
        self._account_revisions: dict[int, int] = {}
        # Accounts whose keys must fail: suspended or deleted. Decisions check it.
        self.blocked_accounts: set[int] = set()
        # Whether any key came in by `keyguard import`: then a token of any shape may
        # be a key, and with keys imported by SHA-256 a miss is looked up once more.
        # Once set they stay set: a stale True costs a miss one digest, no wrong answer.
        self.imported = False
        self.imported_sha256 = False
        self.revision = 0
        self.refreshed_at: float | None = None  # time.monotonic() of the last refresh
        self.store_reachable = False  # did the last refresh reach the store?
        self.reads = 0  # store reads of keys not held (a bounded snapshot's)
        self.evictions = 0  # keys let go to hold others (a bounded snapshot's)

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, digest: bytes) -> Found | None:
        """The live key held under this digest: its id and profile, or None."""
        raise NotImplementedError

    def may_hold(self, digest: bytes) -> bool:  # noqa: ARG002
        """Whether a key with this digest may exist though :meth:`get` has none."""
        return False

    def fetch(self, digests: Sequence[bytes]) -> None:
        """Read from the store what :meth:`may_hold` is unsure of (a full snapshot
        never is)."""

    def by_id(self, key_id: int) -> CachedKey | None:
        """The live key with this id, or None once it is deleted (or was never seen)."""
        raise NotImplementedError

    def credited(self) -> list[CachedKey]:
        """Every live key held with credits, as of now."""
        raise NotImplementedError

    def profiles(self) -> list[Profile]:
        """Every profile live keys hold, as of now; ``holders`` says how many."""
        with self._lock:
            return list(self._shared.values())

    def put(self, key: StoredKey) -> None:
        """Take in a key written by this process; older copies are ignored."""
        with self._lock:
            self._apply(KeyState.of(key))

    def put_account(self, account: Account) -> None:
        """Take in an account status written by this process."""
        with self._lock:
            self._apply_account(account)

    def refresh(self) -> int:
        """Read every change since the last refresh; return how many were applied.

        The keys are read as they are applied: a first load of millions of keys
        never holds a list of them.
        """
        first_load = self.revision == 0
        observe = self._observe_lag is not None and not first_load  # a first load is no propagation
        lags: list[datetime] = []
        applied = 0
        try:
            with self._store.stream_changes(self.revision) as changes, self._lock:
                for account in changes.accounts:
                    self._apply_account(account)
                if first_load:
                    applied = self._load(changes.keys)
                for key in [] if first_load else changes.keys:
                    if self._apply(key):
                        applied += 1
                        if observe and key.changed_at is not None:
                            lags.append(key.changed_at)
                self.revision = max(self.revision, changes.revision)
                self._refreshed()
        except Exception:
            self.store_reachable = False
            raise
        self._observe(lags)
        return applied

    @property
    def age(self) -> float | None:
        """Seconds since the last successful refresh."""
        return None if self.refreshed_at is None else time.monotonic() - self.refreshed_at

    def _refreshed(self) -> None:
        self.refreshed_at = time.monotonic()
        self.store_reachable = True

    def _observe(self, changed: Iterable[datetime]) -> None:
        if self._observe_lag is None:
            return
        now = datetime.now(UTC)
        for when in changed:
            self._observe_lag((now - when).total_seconds())

    def _apply_account(self, account: Account) -> None:
        if self._account_revisions.get(account.id, -1) >= account.revision:
            return
        self._account_revisions[account.id] = account.revision
        if account.status is AccountStatus.ACTIVE:
            self.blocked_accounts.discard(account.id)
        else:
            self.blocked_accounts.add(account.id)

    def _apply(self, key: KeyState) -> bool:
        """Take in a key's state under the lock: whether it was newer than what is held."""
        raise NotImplementedError

    def _load(self, keys: Iterable[KeyState]) -> int:
        """A first load, under the lock: every live key once. How many were taken in."""
        return sum(1 for key in keys if self._apply(key))

    def _note_imported(self, imported: str | None) -> None:
        if imported is not None:  # once set, they stay set (see __init__)
            self.imported = True
            self.imported_sha256 = self.imported_sha256 or imported == "sha256"

    def _hold_profile(self, key_id: int, key: KeyState) -> Profile:
        """The shared profile for ``key``'s settings, counted as held by it."""
        self._note_imported(key.imported)
        shared = shared_of(key)
        profile = self._shared.get(shared)
        if profile is None:
            profile = self._shared[shared] = Profile.of(shared)
        profile.holders += 1
        if profile.credits is not None:
            self._credited.add(key_id)
        return profile

    def _release_profile(self, key_id: int, profile: Profile) -> None:
        self._credited.discard(key_id)
        profile.holders -= 1
        if not profile.holders:
            del self._shared[profile.shared]


class KeyCache(Snapshot):
    """Every live key by digest, plus the revision the snapshot has reached.

    Per key it holds about 200 bytes: one dict entry from the digest to the key
    id, and columns indexed by key id (ids are dense) of the revision held
    (tombstones too), the digest the key is held under and a reference to the
    key's profile. The dict keyed by the whole digest costs some 30 bytes a key
    more than one keyed by part of it, and spares each lookup the comparison of
    the rest: a lookup costs what a plain dict's does.

    Decisions read it without a lock: a key's profile is one reference, replaced
    at once, so a reader sees a key's settings of one revision or the next,
    never a mix.
    """

    def __init__(self, store: Store, observe_lag: Callable[[float], None] | None = None) -> None:
        super().__init__(store, observe_lag)
        self._ids: dict[bytes, int] = {}  # digest -> key id
        # By key id: 1 + the revision held, tombstones too (0: never seen); 4 bytes
        # each until a revision needs 8.
        self._revisions = array("I")
        self._digests: list[bytes | None] = []  # by key id: the digest it is held under
        self._profiles: list[Profile | None] = []  # by key id: None unless live
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def get(self, digest: bytes) -> Found | None:
        """The live key with this digest: its id and profile (a plain tuple, the
        cheapest answer to build), or None."""
        key_id = self._ids.get(digest)
        if key_id is None:
            return None
        profile = self._profiles[key_id]
        return None if profile is None else (key_id, profile)

    def by_id(self, key_id: int) -> CachedKey | None:
        profile = self._profiles[key_id] if 0 <= key_id < len(self._profiles) else None
        return None if profile is None else CachedKey(key_id, profile)

    def live_keys(self) -> list[CachedKey]:
        """Every live key in the snapshot, as of now."""
        with self._lock:
            return [
                CachedKey(key_id, profile)
                for key_id, profile in enumerate(self._profiles)
                if profile is not None
            ]

    def credited(self) -> list[CachedKey]:
        with self._lock:
            profiles = self._profiles
            return [CachedKey(key_id, profiles[key_id]) for key_id in self._credited]  # type: ignore[arg-type]

    def _apply(self, key: KeyState) -> bool:
        key_id = key.id
        if key_id >= len(self._revisions):
            self._grow(key_id)
        if key.revision >= _NARROW and self._revisions.typecode == "I":
            self._revisions = array("q", self._revisions)
        if self._revisions[key_id] > key.revision:
            return False
        self._revisions[key_id] = key.revision + 1
        # A rotation of the server secret gives a key a new digest: the entry under
        # the old one must go, or the old digest would keep answering for the key.
        self._drop(key_id)
        if not key.deleted:
            self._hold(key_id, key)
        return True

    def _load(self, keys: Iterable[KeyState]) -> int:
        """What :meth:`_apply` does for each key, but for a snapshot that holds none
        yet (nor ever did, as when this process wrote keys before its first refresh),
        with no key twice: of millions of keys, each is taken in with nothing to
        compare or drop."""
        if len(self._revisions):
            return super()._load(keys)
        loaded = 0
        shared_profiles, ids, credited = self._shared, self._ids, self._credited
        try:
            for key in keys:
                key_id, digest, revision = key.id, key.digest, key.revision
                if key_id >= len(self._revisions):
                    self._grow(key_id)
                if revision >= _NARROW and self._revisions.typecode == "I":
                    self._revisions = array("q", self._revisions)
                self._revisions[key_id] = revision + 1
                if key.deleted:
                    continue
                if key.imported is not None:
                    self._note_imported(key.imported)
                shared = key[6:]  # shared_of(key), without the call
                profile = shared_profiles.get(shared)
                if profile is None:
                    profile = shared_profiles[shared] = Profile.of(shared)
                profile.holders += 1
                if profile.credits is not None:
                    credited.add(key_id)
                self._digests[key_id] = digest
                self._profiles[key_id] = profile
                ids[digest] = key_id
                loaded += 1
        finally:  # a stream that fails part way leaves the count right
            self._live += loaded
        return loaded

    def _grow(self, key_id: int) -> None:
        more = max(key_id + 1 - len(self._revisions), len(self._revisions) // 8, 1024)
        revisions = self._revisions
        revisions.extend(array(revisions.typecode, bytes(revisions.itemsize * more)))
        self._digests.extend([None] * more)
        self._profiles.extend([None] * more)

    def _hold(self, key_id: int, key: KeyState) -> None:
        digest = key.digest
        self._digests[key_id] = digest
        self._profiles[key_id] = self._hold_profile(key_id, key)
        self._ids[digest] = key_id
        self._live += 1

    def _drop(self, key_id: int) -> None:
        profile = self._profiles[key_id]
        if profile is None:
            return
        self._profiles[key_id] = None
        self._release_profile(key_id, profile)
        digest = self._digests[key_id]
        self._digests[key_id] = None
        if digest is not None and self._ids.get(digest) == key_id:
            del self._ids[digest]
        self._live -= 1


class ChangeFollower:
    """Refresh the snapshot as soon as the store signals a change.

    Runs beside the periodic refresh, which remains the guarantee: this only makes
    propagation faster than the polling interval.
    """

    def __init__(self, cache: Snapshot, signal: ChangeSignal) -> None:
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
