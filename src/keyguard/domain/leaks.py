"""What a leak does to a key.

A key found in public (a secret scanner reported it) is revoked for good: it is
made inactive and ``leaked_at`` is set, and it can never be activated again.
Its owner rolls it, which gives a working new key, or creates another.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import KeySettings, StoredKey
from keyguard.errors import Conflict

LEAKED = "API key was leaked; roll it or create a new key"


@dataclass(frozen=True, slots=True)
class Leak:
    """One token found in public, as a store looks it up: the digests it may be
    stored under (the server secret's, and the previous one's during a rotation),
    and where it was found, for the audit trail (never the token)."""

    digests: tuple[bytes, ...]
    found: Mapping[str, Any]


def is_revocable(key: StoredKey) -> bool:
    """Whether a leak of ``key`` changes it: not if it was deleted or leaked before."""
    return not key.deleted and key.leaked_at is None


def leaked_settings(settings: KeySettings) -> KeySettings:
    """The settings of a key once it is known to have leaked."""
    return replace(settings, active=False)


def refuse_activation(key: StoredKey, changes: KeyChanges) -> None:
    """Raise :class:`Conflict` if ``changes`` would make a leaked key active again."""
    if key.leaked_at is not None and changes.active:
        raise Conflict(LEAKED)


def successor_settings(key: StoredKey) -> KeySettings:
    """The settings of the key that replaces ``key`` when it is rolled: the same ones,
    but active when ``key`` leaked, since the leak, not its owner, made it inactive."""
    if key.leaked_at is None:
        return key.settings
    return replace(key.settings, active=True)
