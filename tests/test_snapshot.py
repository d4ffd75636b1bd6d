"""The compact snapshot decides exactly as a plain dict of keys does, whatever changes.

:class:`DictCache` is the snapshot as keyguard first kept it: one dict from digest
to a key parsed on its own, a dict of revisions and a dict of digests by key id.
A randomised, derandomised population of keys goes through randomised changes
(settings updates, deletions, account suspensions, digest rotations by a new
server secret, older copies arriving late) into both, and every key's token is
judged by a real :class:`Decider` over each, from inside and outside allow-lists,
on routes of every scope.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard.cache import CachedKey, KeyCache, Profile, Shared, shared_of
from keyguard.decide import Decider, Decision
from keyguard.domain.keys import ALPHABET, BODY_LENGTH, checksum
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.records import Account, AccountStatus, KeySettings, KeyState, StoredKey
from keyguard.domain.scopes import Level
from keyguard.runtime import MANAGEMENT_ROUTES, wavix_route_map
from keyguard.storage import open_store
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault

NOW = datetime(2030, 6, 1, tzinfo=UTC)
OLD_SECRET, NEW_SECRET = b"o" * 32, b"n" * 32
SECRETS = {0: Vault(OLD_SECRET), 1: Vault(NEW_SECRET)}
ROUTES = wavix_route_map().with_routes(MANAGEMENT_ROUTES)
REQUESTS = [  # method, path, client address
    ("POST", "/v3/messages", "10.1.2.3"),
    ("GET", "/v1/numbers", "192.0.2.9"),
    ("GET", "/v1/nothing-here", "2001:db8::1"),
    ("POST", "/v1/calls", None),
]
ALLOW_LISTS = [("10.0.0.0/8",), ("192.0.2.0/28", "2001:db8::/32"), ("203.0.113.7",)]
GRANTS = [{}, {"messages": Level.WRITE}, {"numbers": Level.READ, "calls": Level.WRITE}]
EXPIRIES = [None, NOW - timedelta(seconds=1), NOW + timedelta(days=1)]
LIMITS = [None, RateLimit(2, 60), RateLimit(1000, 3600)]
KEY_IDS = range(1, 13)
ACCOUNT_IDS = range(1, 4)


def token(key_id: int) -> str:
    """A well-formed token of its own for each key id."""
    head = "kg_" + "".join(ALPHABET[(key_id * 7 + n) % len(ALPHABET)] for n in range(BODY_LENGTH))
    return head + checksum(head)


class DictCache(KeyCache):
    """The reference: the snapshot as one plain dict of keys, each parsed on its own."""

    def __init__(self) -> None:
        super().__init__(open_store("memory://"))
        self.by_digest: dict[bytes, CachedKey] = {}
        self.key_revisions: dict[int, int] = {}
        self.held: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.by_digest)

    def get(self, digest: bytes) -> CachedKey | None:
        return self.by_digest.get(digest)

    def by_id(self, key_id: int) -> CachedKey | None:
        digest = self.held.get(key_id)
        return None if digest is None else self.by_digest.get(digest)

    def put(self, key: StoredKey) -> None:
        if self.key_revisions.get(key.id, -1) >= key.revision:
            return
        self.key_revisions[key.id] = key.revision
        held = self.held.pop(key.id, None)
        if held is not None and held != key.digest:
            self.by_digest.pop(held, None)
        if key.deleted:
            self.by_digest.pop(key.digest, None)
        else:
            self.by_digest[key.digest] = CachedKey(key.id, Profile.of(shared_of(KeyState.of(key))))
            self.held[key.id] = key.digest


@dataclass(frozen=True)
class Write:
    key_id: int
    account_id: int
    settings: KeySettings
    secret: int  # which server secret the digest is made under
    deleted: bool
    leaked: bool


@dataclass(frozen=True)
class Late:
    """A copy of an earlier write (or account change) taken in again, after newer ones."""

    back: int


@dataclass(frozen=True)
class Status:
    account_id: int
    status: AccountStatus


key_settings = st.builds(
    KeySettings,
    label=st.just("k"),
    active=st.booleans(),
    restricted=st.booleans(),
    permitted_ips=st.sampled_from(ALLOW_LISTS),
    scopes_enabled=st.booleans(),
    scopes=st.sampled_from(GRANTS),
    expires_at=st.sampled_from(EXPIRIES)
    | st.integers(-5, 5).map(lambda s: NOW + timedelta(seconds=s)),  # unique expiries too
    ratelimit=st.sampled_from(LIMITS) | st.integers(1, 9).map(lambda n: RateLimit(n, 60)),
)
writes = st.builds(
    Write,
    key_id=st.sampled_from(KEY_IDS),
    account_id=st.sampled_from(ACCOUNT_IDS),
    settings=key_settings,
    secret=st.sampled_from([0, 1]),
    deleted=st.sampled_from([False, False, False, True]),
    leaked=st.sampled_from([False, False, False, True]),
)
changes = st.lists(
    st.one_of(
        writes,
        writes,
        writes,
        st.builds(Late, back=st.integers(1, 6)),
        st.builds(Status, st.sampled_from(ACCOUNT_IDS), st.sampled_from(list(AccountStatus))),
    ),
    min_size=1,
    max_size=60,
)


def stored(write: Write, revision: int) -> StoredKey:
    return StoredKey(
        id=write.key_id,
        account_id=write.account_id,
        digest=SECRETS[write.secret].digest(token(write.key_id)),
        sealed_value=b"" if write.deleted else b"sealed",
        settings=write.settings,
        created_at=NOW,
        revision=revision,
        deleted=write.deleted,
        leaked_at=NOW if write.leaked else None,
    )


def decider(cache: KeyCache) -> Decider:
    usage = UsageRecorder(open_store("memory://"), clock=NOW.timestamp)
    vault = Vault(NEW_SECRET, previous=OLD_SECRET)
    return Decider(vault, cache, ROUTES, usage, clock=NOW.timestamp)


def decisions(judge: Decider) -> list[tuple[Decision, tuple[RateLimit, int] | None]]:
    """Each key's decisions; a rate-limit window (an object) by its policy and count."""
    made = [
        judge.decide(token(key_id), ip, method, path)
        for key_id in KEY_IDS
        for method, path, ip in REQUESTS
    ]
    return [
        (
            decision._replace(ratelimit=None),
            None if (w := decision.ratelimit) is None else (w.policy, w.count.admitted),
        )
        for decision in made
    ]


def seen(cache: KeyCache) -> list[tuple[int, Shared] | None]:
    """What the snapshot answers by id and by every digest a key ever had, profiles
    compared by what they were made of."""
    by_id = [cache.by_id(key_id) for key_id in KEY_IDS]
    by_digest = [
        cache.get(vault.digest(token(key_id))) for key_id in KEY_IDS for vault in SECRETS.values()
    ]
    return [None if key is None else (key[0], key[1].shared) for key in [*by_id, *by_digest]]


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(changes=changes)
def test_compact_snapshot_decides_as_a_plain_dict_does(
    changes: list[Write | Late | Status],
) -> None:
    judge_both(changes)


def judge_both(changes: list[Write | Late | Status]) -> None:
    reference, compact = DictCache(), KeyCache(open_store("memory://"))
    judges = decider(reference), decider(compact)
    history: list[StoredKey | Account] = []
    for revision, change in enumerate(changes, start=1):
        if isinstance(change, Write):
            item: StoredKey | Account = stored(change, revision)
        elif isinstance(change, Status):
            item = Account(change.account_id, "a", NOW, change.status, revision)
        elif history:
            item = history[max(0, len(history) - change.back)]
        else:
            continue
        history.append(item)
        for cache in (reference, compact):
            if isinstance(item, StoredKey):
                cache.put(item)
            else:
                cache.put_account(item)
        assert len(compact) == len(reference)
        assert seen(compact) == seen(reference)
        assert decisions(judges[1]) == decisions(judges[0])


@pytest.mark.parametrize("digest", [b"", b"x" * 31, b"x" * 33])
def test_only_a_whole_digest_finds_a_key(digest: bytes) -> None:
    cache = KeyCache(open_store("memory://"))
    key = stored(Write(1, 1, KeySettings(label="a"), 1, False, False), 1)
    cache.put(key)
    assert cache.get(key.digest[: len(digest)] + digest[len(key.digest) :]) is None
    assert cache.get(key.digest[:-1] + bytes([key.digest[-1] ^ 1])) is None
    assert cache.get(key.digest) is not None
