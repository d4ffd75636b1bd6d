"""The records keyguard stores: accounts and their API keys."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from keyguard.domain.scopes import Level


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What an account chooses about a key; everything but identity and secret."""

    label: str
    active: bool = True
    restricted: bool = False
    permitted_ips: tuple[str, ...] = ()
    scopes_enabled: bool = False
    scopes: Mapping[str, Level] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as the store holds it: the secret only as digest and ciphertext.

    ``scopes`` holds granted levels only; a group that is absent is ``none``.
    ``deleted`` keys appear only in change feeds, so that caches drop them.
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
