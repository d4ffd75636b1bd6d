"""Migrations: instances starting together take turns, and every earlier schema upgrades
with its data intact."""

import multiprocessing
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from keyguard.cache import KeyCache
from keyguard.domain.keys import generate
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import Level
from keyguard.storage import open_store, tables
from keyguard.storage.migrations import alembic_config, upgrade
from keyguard.storage.sql import SQLStore
from keyguard.vault import Vault

STARTING_TOGETHER = 4
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
USED = datetime(2026, 1, 3, 4, 5, 6, tzinfo=UTC)


def earlier_revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = [revision.revision for revision in script.walk_revisions()]
    return sorted(revisions)[:-1]  # every revision but the head


def migrate_at_the_barrier(url: str, barrier: Any, errors: Any) -> None:
    """One instance's start: open the store, wait for the others, migrate."""
    store = open_store(url)
    barrier.wait()
    try:
        store.migrate()
        errors.put(None)
    except Exception as error:
        errors.put(f"{type(error).__name__}: {error}")
    finally:
        store.close()


@pytest.mark.slow
def test_instances_migrating_one_database_together_all_succeed(database_url: str) -> None:
    """Separate processes, as instances are: alembic keeps state per process."""
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(STARTING_TOGETHER), context.Queue()
    starts = [
        context.Process(target=migrate_at_the_barrier, args=(database_url, barrier, errors))
        for _ in range(STARTING_TOGETHER)
    ]
    for start in starts:
        start.start()
    for start in starts:
        start.join(timeout=60)

    assert [errors.get(timeout=5) for _ in starts] == [None] * STARTING_TOGETHER
    store = open_store(database_url)
    try:
        account, _ = store.create_account("acme", b"d" * 32, b"s", KeySettings(label="k"))
    finally:
        store.close()
    assert account.id == 1


def legacy_table(connection: sa.Connection, current: sa.Table) -> sa.Table:
    """``current`` as far as the database's older schema has it: its columns, no defaults."""
    existing = {column["name"] for column in sa.inspect(connection).get_columns(current.name)}
    columns = [sa.Column(c.name, c.type) for c in current.columns if c.name in existing]
    return sa.Table(current.name, sa.MetaData(), *columns)


@pytest.mark.parametrize("revision", earlier_revisions())
def test_a_database_at_an_earlier_revision_upgrades_with_its_keys_working(
    database_url: str, revision: str
) -> None:
    vault = Vault(b"s" * 32)
    token = generate("kg")
    digest = vault.digest(token)
    store = open_store(database_url)
    assert isinstance(store, SQLStore)
    try:
        with store.engine.begin() as connection:
            upgrade(connection, revision)
            connection.execute(
                legacy_table(connection, tables.accounts).insert(),
                {"name": "legacy", "created_at": CREATED},
            )
            connection.execute(
                legacy_table(connection, tables.api_keys).insert(),
                {
                    "account_id": 1,
                    "label": "old key",
                    "digest": digest,
                    "sealed_value": vault.seal(token, digest),
                    "active": True,
                    "restricted": True,
                    "permitted_ips": ["203.0.113.0/24"],
                    "scopes_enabled": True,
                    "scopes": {"messages": "write"},
                    "created_at": CREATED,
                    "last_used_at": USED,
                    "revision": 1,
                },
            )
            connection.execute(tables.meta.update().values(revision=1))

        store.migrate()

        key = store.get_key(1, 1)
        assert key is not None
        assert (key.settings.label, key.settings.permitted_ips) == ("old key", ("203.0.113.0/24",))
        assert key.settings.scopes == {"messages": Level.WRITE}
        assert (key.created_at, key.last_used_at) == (CREATED, USED)
        assert vault.unseal(key.sealed_value, key.digest) == token
        cache = KeyCache(store)
        cache.refresh()
        assert cache.get(digest) is not None
        _, new_key = store.create_account("after upgrade", b"n" * 32, b"s", KeySettings(label="k"))
        assert new_key.id == 2
    finally:
        store.close()


def test_a_new_sqlite_database_opens_while_another_connection_holds_a_write_lock(
    tmp_path: Path,
) -> None:
    """Switching to WAL gets no busy timeout from SQLite: keyguard waits for it itself."""
    database = tmp_path / "keyguard.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE unrelated (a)")  # a database still in rollback mode
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    release.start()
    store = open_store(f"sqlite:///{database}")
    try:
        store.migrate()
        account, _ = store.create_account("acme", b"d" * 32, b"s", KeySettings(label="k"))
    finally:
        store.close()
        release.join()
        holder.close()
    assert account.id == 1
