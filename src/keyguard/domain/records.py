"""The records keyguard stores: accounts and their API keys."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Literal, NamedTuple

from keyguard.domain.credits import Refill
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.scopes import Level


class AccountStatus(Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # every key fails with 401 until resumed
    DELETED = "deleted"  # for good; its keys are deleted with it


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    created_at: datetime
    status: AccountStatus = AccountStatus.ACTIVE
    revision: int = 0


# The audit trail's vocabulary: what it records, and who can do it. Storage, the
# service and the API documents all take these types, so a misspelt action is a
# type error, not a record no filter finds.
Action = Literal[
    "account.create", "account.suspend", "account.resume", "account.delete",
    "key.create", "key.update", "key.activate", "key.deactivate", "key.delete",
    "key.roll", "key.leak", "key.expiring", "key.expire", "key.import",
]  # fmt: skip
ActorKind = Literal["key", "operator", "cli", "keyguard", "github"]  # keyguard: notices of expiry


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: an API key, the operator, the command line, keyguard itself,
    or GitHub's secret scanning reporting a leaked key."""

    kind: ActorKind
    key_id: int | None = None
    ip: str | None = None


CLI = Actor("cli")
KEYGUARD = Actor("keyguard")  # keyguard itself, noting that a key expires


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    account_id: int
    occurred_at: datetime
    action: Action
    key_id: int | None
    actor: Actor
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What an account chooses about a key; everything but identity and secret."""

    label: str
    active: bool = True
    restricted: bool = False
    permitted_ips: tuple[str, ...] = ()
    scopes_enabled: bool = False
    scopes: Mapping[str, Level] = field(default_factory=dict)
    expires_at: datetime | None = None  # refused from this second on; None: never
    ratelimit: RateLimit | None = None  # None: no rate limit
    # Credits left as the store holds them (less what processes hold in leases);
    # None: unlimited. Written only when a request gives them, never with the rest.
    remaining: int | None = None
    refill: Refill | None = None


def is_expired(settings: KeySettings, now: datetime) -> bool:
    return settings.expires_at is not None and settings.expires_at <= now


# How an imported key came in: by its value (stored like keyguard's own keys), or by
# the SHA-256 digest another system kept (verified by that digest, never displayable).
Imported = Literal["value", "sha256"]


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as the store holds it: the secret only as digest and ciphertext.

    ``scopes`` holds granted levels only; a group that is absent is ``none``.
    ``deleted`` keys appear only in change feeds, so that caches drop them.
    ``rolled_from`` names the key this one replaced; a key with ``leaked_at`` was
    found in public and is refused for good, whatever ``active`` says.
    ``imported`` says how a key brought over from another system came in; a
    ``"sha256"`` key has no ``sealed_value`` (``b""``): its secret cannot be shown.
    """

    id: int
    account_id: int
    digest: bytes
    sealed_value: bytes
    settings: KeySettings
    created_at: datetime
    last_used_at: datetime | None = None
    revision: int = 0
    deleted: bool = False
    changed_at: datetime | None = None  # when ``revision`` was written, to the microsecond
    rolled_from: int | None = None
    leaked_at: datetime | None = None
    imported: Imported | None = None
    # Moved by every change of the credits, so that leases taken before it are dropped.
    credits_epoch: int = 0
    credits_period: int = 0  # the refill period (domain.credits.period_of) last refilled


@dataclass(frozen=True, slots=True)
class ChangeFeed:
    """What a change feed returns: everything after a revision, up to ``revision``."""

    revision: int
    keys: list[StoredKey]
    accounts: list[Account]


class KeyState(NamedTuple):
    """What a key snapshot holds of a key, as :meth:`Store.stream_changes` yields it.

    The fields from ``account_id`` on are what keys share when their settings are
    the same; :class:`~keyguard.cache.KeyCache` keeps one copy of each such set.
    """

    id: int
    digest: bytes
    revision: int
    deleted: bool
    changed_at: datetime | None
    imported: Imported | None
    account_id: int
    active: bool  # false for a leaked key too, whatever its settings say
    networks: tuple[str, ...] | None  # None: not restricted
    scopes: tuple[tuple[str, Level], ...] | None  # granted levels; None: full access
    expires: float | None  # a POSIX timestamp; None: never
    ratelimit: RateLimit | None
    credits: int | None  # the epoch of the key's credits; None: unlimited
    refill_interval: str | None

    @classmethod
    def of(cls, key: StoredKey) -> "KeyState":
        settings = key.settings
        expires = settings.expires_at
        return cls(
            key.id,
            key.digest,
            key.revision,
            key.deleted,
            key.changed_at,
            key.imported,
            key.account_id,
            settings.active and key.leaked_at is None,
            settings.permitted_ips if settings.restricted else None,
            tuple(settings.scopes.items()) if settings.scopes_enabled else None,
            None if expires is None else expires.timestamp(),
            settings.ratelimit,
            None if settings.remaining is None else key.credits_epoch,
            None if settings.refill is None else settings.refill.interval,
        )


@dataclass(frozen=True, slots=True)
class KeyStream:
    """A change feed streamed: what :class:`ChangeFeed` holds, keys read as they come."""

    revision: int
    accounts: list[Account]
    keys: Iterator[KeyState]


@dataclass(frozen=True, slots=True)
class DigestStream:
    """What a bounded snapshot's first load reads: the newest revision, the accounts
    that are not active, about how many keys are live (to size a filter by), and
    every live key's digest with how it was imported."""

    revision: int
    accounts: list[Account]
    live: int
    digests: Iterator[tuple[bytes, Imported | None]]


def settings_document(settings: KeySettings) -> dict[str, Any]:
    """A key's settings as plain JSON values, as stored and as audited: no secret."""
    return {
        "label": settings.label,
        "active": settings.active,
        "restricted": settings.restricted,
        "permitted_ips": list(settings.permitted_ips),
        "scopes_enabled": settings.scopes_enabled,
        "scopes": {
            group: level.label
            for group, level in settings.scopes.items()
            if level is not Level.NONE
        },
        "expires_at": timestamp(settings.expires_at),
        "ratelimit": None if settings.ratelimit is None else settings.ratelimit.document(),
        "remaining": settings.remaining,
        "refill": None if settings.refill is None else settings.refill.document(),
    }


def timestamp(value: datetime | None) -> str | None:
    """A time as the wire and the audit trail show it: ``2026-01-31T12:00:00Z``."""
    if value is None:
        return None
    return f"{value.year:04d}{value:-%m-%dT%H:%M:%S}Z"  # %Y is not padded before year 1000
