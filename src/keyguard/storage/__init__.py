"""Where keyguard keeps accounts and keys.

:class:`Store` is the one seam between keyguard and its database. Backends are
chosen by URL in :func:`open_store`; each passes the same contract suite
(``tests/storage/test_contract.py``).
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from sqlalchemy.exc import ArgumentError

from keyguard.domain.fields import KeyChanges
from keyguard.domain.records import Account, KeySettings, StoredKey
from keyguard.errors import ConfigurationError


class ChangeSignal(Protocol):
    """Wakes a waiting process when another one changed a key."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a change may have happened.

        After a lost connection it reconnects and answers True, since changes may
        have been missed meanwhile.
        """

    def close(self) -> None: ...


class Store(Protocol):
    """Durable accounts and keys. Every method is one transaction."""

    def migrate(self) -> None:
        """Bring the schema up to date."""

    def ping(self) -> None:
        """Return when the database answers; raise ``StorageUnavailable`` if not."""

    def close(self) -> None: ...

    def create_account(
        self, name: str, digest: bytes, sealed_value: bytes, settings: KeySettings
    ) -> tuple[Account, StoredKey]:
        """A new account together with its first key."""

    def list_accounts(self) -> list[Account]: ...

    def get_account(self, account_id: int) -> Account | None: ...

    def create_key(
        self, account_id: int, digest: bytes, sealed_value: bytes, settings: KeySettings
    ) -> StoredKey: ...

    def list_keys(self, account_id: int, label: str | None = None) -> list[StoredKey]:
        """The account's keys by id; ``label`` is a case-insensitive substring."""

    def get_key(self, account_id: int, key_id: int) -> StoredKey | None: ...

    def update_key(self, account_id: int, key_id: int, changes: KeyChanges) -> StoredKey | None:
        """Apply ``changes`` atomically; ``None`` if the account has no such key."""

    def delete_key(self, account_id: int, key_id: int) -> StoredKey | None:
        """Revoke a key for good; its tombstone, or ``None`` if there was no such key."""

    def changes_since(self, revision: int) -> tuple[int, list[StoredKey]]:
        """The newest revision and every key changed after ``revision``.

        Deleted keys are included (``deleted=True``) except when ``revision`` is 0.
        """

    def record_usage(self, used: Mapping[int, datetime]) -> None:
        """Move ``last_used_at`` forward, never back, for each key id given."""

    def change_signal(self) -> ChangeSignal | None:
        """A push channel for changes, if the backend has one; polling covers the rest."""


def open_store(url: str, pool_size: int = 5) -> Store:
    """The backend for a database URL: ``postgresql://…``, ``sqlite:///path``, ``memory://``."""
    scheme = url.partition(":")[0].partition("+")[0]
    if scheme == "memory":
        from keyguard.storage.memory import MemoryStore

        return MemoryStore()
    if scheme in ("sqlite", "postgresql", "postgres"):
        from keyguard.storage.sql import SQLStore

        try:
            return SQLStore(url, pool_size)
        except (ArgumentError, ValueError) as error:
            raise ConfigurationError(f"Invalid database URL: {error}") from None
    raise ConfigurationError(
        f"Unsupported database URL scheme {scheme!r}: use postgresql://user@host/db, "
        "sqlite:///path/to/keyguard.db or memory://."
    )


__all__ = ["ChangeSignal", "Store", "open_store"]
