"""An in-memory :class:`~keyguard.storage.Store`, for tests and throwaway runs."""

import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from keyguard.domain.fields import KeyChanges, apply
from keyguard.domain.records import Account, KeySettings, StoredKey


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class MemoryStore:
    """Everything in dicts behind one lock; lost when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[int, Account] = {}
        self._keys: dict[int, StoredKey] = {}
        self._digests: set[bytes] = set()
        self._revision = 0

    def migrate(self) -> None:
        pass

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass

    def change_signal(self) -> None:
        return None

    def create_account(
        self, name: str, digest: bytes, sealed_value: bytes, settings: KeySettings
    ) -> tuple[Account, StoredKey]:
        with self._lock:
            account = Account(len(self._accounts) + 1, name, _now())
            self._accounts[account.id] = account
            return account, self._insert(account.id, digest, sealed_value, settings)

    def list_accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())

    def get_account(self, account_id: int) -> Account | None:
        return self._accounts.get(account_id)

    def create_key(
        self, account_id: int, digest: bytes, sealed_value: bytes, settings: KeySettings
    ) -> StoredKey:
        with self._lock:
            if account_id not in self._accounts:
                raise ValueError(f"no account {account_id}")
            return self._insert(account_id, digest, sealed_value, settings)

    def _insert(
        self, account_id: int, digest: bytes, sealed_value: bytes, settings: KeySettings
    ) -> StoredKey:
        if digest in self._digests:
            raise ValueError("duplicate key digest")
        self._digests.add(digest)
        self._revision += 1
        key = StoredKey(
            id=len(self._keys) + 1,
            account_id=account_id,
            digest=digest,
            sealed_value=sealed_value,
            settings=settings,
            created_at=_now(),
            revision=self._revision,
            changed_at=datetime.now(UTC),
        )
        self._keys[key.id] = key
        return key

    def list_keys(self, account_id: int, label: str | None = None) -> list[StoredKey]:
        needle = label.casefold() if label else ""
        with self._lock:
            return [
                key
                for key in self._keys.values()
                if key.account_id == account_id
                and not key.deleted
                and needle in key.settings.label.casefold()
            ]

    def get_key(self, account_id: int, key_id: int) -> StoredKey | None:
        key = self._keys.get(key_id)
        if key is None or key.account_id != account_id or key.deleted:
            return None
        return key

    def update_key(self, account_id: int, key_id: int, changes: KeyChanges) -> StoredKey | None:
        with self._lock:
            key = self.get_key(account_id, key_id)
            if key is None:
                return None
            self._revision += 1
            key = replace(
                key,
                settings=apply(key.settings, changes),
                revision=self._revision,
                changed_at=datetime.now(UTC),
            )
            self._keys[key_id] = key
            return key

    def delete_key(self, account_id: int, key_id: int) -> StoredKey | None:
        with self._lock:
            key = self.get_key(account_id, key_id)
            if key is None:
                return None
            self._revision += 1
            tombstone = replace(
                key,
                deleted=True,
                sealed_value=b"",
                revision=self._revision,
                changed_at=datetime.now(UTC),
            )
            self._keys[key_id] = tombstone
            return tombstone

    def changes_since(self, revision: int) -> tuple[int, list[StoredKey]]:
        with self._lock:
            changed = [
                key
                for key in self._keys.values()
                if key.revision > revision and not (revision == 0 and key.deleted)
            ]
            return self._revision, sorted(changed, key=lambda key: key.revision)

    def record_usage(self, used: Mapping[int, datetime]) -> None:
        with self._lock:
            for key_id, when in used.items():
                key = self._keys.get(key_id)
                if key is not None and (key.last_used_at is None or key.last_used_at < when):
                    self._keys[key_id] = replace(key, last_used_at=when)
