"""The SQL :class:`~keyguard.storage.Store`, on SQLAlchemy Core: SQLite and PostgreSQL.

Every write runs in one transaction that also bumps ``keyguard_meta.revision``;
that row lock orders writers, so a cache that reads changes by revision never
misses one.

Both dialects run the same queries except where they differ; there the code
branches on the dialect in place, each branch beside its reason:
:func:`create_engine_for` sets up connections (PostgreSQL's pool; SQLite's WAL,
``synchronous=FULL`` and ``BEGIN IMMEDIATE``), and :class:`SQLStore` branches on
``self.dialect`` for its process-wide write lock (SQLite), the migration lock
(PostgreSQL), which errors mean the database is unavailable, ``pg_notify`` on
commit and :meth:`~SQLStore.change_signal` (PostgreSQL), the upsert of request
counts, the case-insensitive label filter, and the batch update of ``last_used_at``.
"""

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    Result,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    create_engine,
    delete,
    event,
    func,
    insert,
    null,
    or_,
    select,
    text,
    type_coerce,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from keyguard.domain.audit import STATUS_ACTIONS
from keyguard.domain.counts import OUTCOMES, Granularity
from keyguard.domain.credits import CreditGrant, Refill, period_of
from keyguard.domain.events import Delivery, Sweep
from keyguard.domain.fields import KeyChanges, apply, rolled_settings
from keyguard.domain.leaks import (
    Leak,
    is_revocable,
    leaked_settings,
    refuse_activation,
    successor_settings,
)
from keyguard.domain.ratelimit import RateLimit
from keyguard.domain.records import (
    CLI,
    KEYGUARD,
    Account,
    AccountStatus,
    Action,
    Actor,
    AuditRecord,
    ChangeFeed,
    DigestStream,
    KeySettings,
    KeyState,
    KeyStream,
    StoredKey,
    settings_document,
    timestamp,
)
from keyguard.domain.scopes import expand
from keyguard.errors import ConfigurationError, StorageUnavailable
from keyguard.storage import (
    LEAK_BATCH,
    AuditQuery,
    ChangeSignal,
    ImportResult,
    KeyRewrite,
    NewKey,
    import_document,
    recorded_address,
    sort_batch,
)
from keyguard.storage.tables import (
    UTCDateTime,
    accounts,
    api_keys,
    audit_log,
    key_usage,
    meta,
    webhook_delivery,
)

CHANNEL = "keyguard_changes"
USAGE_BATCH = 1000
STREAM_BATCH = 5000  # rows a streamed change feed holds at a time
_SQLITE_UNAVAILABLE = ("unable to open", "locked", "disk i/o", "readonly", "no such table")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def database_url(url: str) -> URL:
    """The SQLAlchemy URL for a keyguard database URL; ``postgresql://`` uses psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


_SQLITE_BUSY_SECONDS = 30  # how long a SQLite connection waits for another's lock
_IN_LIMIT = 1000  # values in one IN (...): SQLite caps the parameters of a statement


def create_engine_for(url: str, pool_size: int = 5) -> Engine:
    """An engine with keyguard's settings for the URL's dialect.

    PostgreSQL gets a bounded pool (``pool_size`` connections per process) that
    checks connections before use. SQLite runs in WAL mode with
    ``synchronous=FULL`` so that an acknowledged write survives a crash of the
    process or the machine; write transactions start with ``BEGIN IMMEDIATE`` so
    that concurrent writers queue on the lock instead of failing on a stale
    snapshot.
    """
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        # pre-ping: after a database restart, stale pooled connections are
        # replaced instead of failing the first requests.
        return create_engine(
            parsed,
            hide_parameters=True,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=10,
            connect_args={"connect_timeout": 5},
        )
    if parsed.database and parsed.database != ":memory:" and "uri" not in parsed.query:
        _create_private(Path(parsed.database))
    # A connection per request thread (the server runs up to 40): cheap for SQLite,
    # and opening one costs more than a query.
    engine = create_engine(
        parsed,
        hide_parameters=True,
        pool_size=40,
        max_overflow=0,
        connect_args={"timeout": _SQLITE_BUSY_SECONDS},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # keyguard issues BEGIN itself
        dbapi_connection.create_function("keyguard_casefold", 1, _casefold, deterministic=True)
        cursor = dbapi_connection.cursor()
        _enter_wal_mode(cursor)
        for pragma in ("synchronous=FULL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get("keyguard_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


def _create_private(database: Path) -> None:
    """Create the database file (0600) and the folders missing above it (0700).

    SQLite would create the file readable by everyone; it gives its ``-wal`` and
    ``-shm`` files the database file's mode, so they are private too. An existing
    file or folder keeps its mode.
    """
    folder = database.parent
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"Cannot create the database folder {folder}: {error.strerror}."
        ) from None
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # an existing database, or another process created it just now
    except OSError as error:
        raise ConfigurationError(
            f"Cannot create the database file {database}: {error.strerror}."
        ) from None


def _enter_wal_mode(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting for the moment of exclusive access it needs.

    SQLite answers "database is locked" at once, without its busy timeout, when
    another connection holds a lock while a database is switched to WAL: processes
    that open a new database together (instances starting side by side) retry.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _casefold(text: str | None) -> str | None:
    return None if text is None else text.casefold()


class SQLStore:
    """Accounts and keys in a relational database."""

    def __init__(
        self, url: str, pool_size: int = 5, setting: str = "KEYGUARD_DATABASE_URL"
    ) -> None:
        self.engine = create_engine_for(url, pool_size)
        self.setting = setting  # where the URL comes from, as errors name it
        self.dialect = self.engine.dialect.name
        # SQLite admits one writer at a time and makes the others sleep and retry;
        # queueing this process's writers here instead keeps the slowest write short.
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        self.safe_url = self.engine.url.render_as_string(hide_password=True)

    # -- plumbing ---------------------------------------------------------------

    def migrate(self) -> None:
        from keyguard.storage.migrations import upgrade

        # Instances starting together migrate one at a time: PostgreSQL by an
        # advisory lock, SQLite by taking its write lock before alembic reads.
        with self._translate_errors(), self.engine.connect() as connection:
            connection.execution_options(keyguard_write=True)
            with connection.begin():
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(7365221)"))
                upgrade(connection)

    def recount_keys(self) -> None:
        with self._writing() as (connection, _revision):
            live = (
                select(func.count())
                .where(api_keys.c.account_id == accounts.c.id, api_keys.c.deleted_at.is_(None))
                .scalar_subquery()
            )
            connection.execute(update(accounts).values(key_count=live))

    def needs_migration(self) -> bool:
        from keyguard.storage.migrations import is_behind

        with self._reading() as connection:
            return is_behind(connection)

    def ping(self) -> None:
        with self._translate_errors(), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as error:
            if not self._is_unavailable(error):
                raise
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StorageUnavailable(
                f"Cannot reach the database at {self.safe_url} ({reason}). Check that the "
                f"server is running and that {self.setting} is right."
            ) from None

    def _is_unavailable(self, error: DBAPIError) -> bool:
        """Is this the database being out of reach, rather than a bug?"""
        if error.connection_invalidated or isinstance(error, InterfaceError):
            return True
        if not isinstance(error, OperationalError):
            return False
        if self.dialect != "sqlite":
            return True
        # SQLite reports SQL mistakes as OperationalError too.
        message = str(error.orig).lower()
        return any(sign in message for sign in _SQLITE_UNAVAILABLE)

    # -- usage counts -------------------------------------------------------------

    def record_counts(self, counts: Mapping[int, Sequence[int]], at: datetime) -> None:
        rows = [
            {
                "key_id": key_id,
                "account_id": added[0],
                "granularity": granularity.value,
                "bucket": granularity.floor(at),
                **dict(zip(OUTCOMES, added[1:], strict=True)),
            }
            for key_id, added in counts.items()
            for granularity in Granularity
        ]
        upsert = (sqlite_insert if self.dialect == "sqlite" else postgresql_insert)(key_usage)
        statement = upsert.on_conflict_do_update(
            index_elements=["key_id", "granularity", "bucket"],
            set_={name: key_usage.c[name] + upsert.excluded[name] for name in OUTCOMES},
        )
        with self._translate_errors(), self.engine.begin() as connection:
            connection.execute(statement, rows)

    def usage_series(
        self,
        account_id: int,
        key_id: int,
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[datetime, tuple[int, ...]]:
        query = select(key_usage.c.bucket, *(key_usage.c[name] for name in OUTCOMES)).where(
            key_usage.c.key_id == key_id,
            _of_account(account_id),
            *_span(granularity, since, until),
        )
        with self._reading() as connection:
            return {row[0]: tuple(row[1:]) for row in connection.execute(query)}

    def usage_of_keys(
        self,
        account_id: int,
        key_ids: Collection[int],
        granularity: Granularity,
        since: datetime,
        until: datetime,
    ) -> dict[int, dict[datetime, tuple[int, ...]]]:
        found: dict[int, dict[datetime, tuple[int, ...]]] = {}
        if not key_ids:
            return found
        columns = (key_usage.c.key_id, key_usage.c.bucket, *(key_usage.c[n] for n in OUTCOMES))
        query = select(*columns).where(
            key_usage.c.key_id.in_(sorted(key_ids)),
            _of_account(account_id),
            *_span(granularity, since, until),
        )
        with self._reading() as connection:
            for row in connection.execute(query):
                found.setdefault(row[0], {})[row[1]] = tuple(row[2:])
        return found

    def usage_totals(
        self, account_id: int, granularity: Granularity, since: datetime, until: datetime
    ) -> dict[int, tuple[int, ...]]:
        query = (
            select(key_usage.c.key_id, *(func.sum(key_usage.c[name]) for name in OUTCOMES))
            .where(key_usage.c.account_id == account_id, *_span(granularity, since, until))
            .group_by(key_usage.c.key_id)
            .order_by(key_usage.c.key_id)
        )
        with self._reading() as connection:
            return {
                row[0]: tuple(int(count) for count in row[1:]) for row in connection.execute(query)
            }

    def prune_usage(self, before: Mapping[Granularity, datetime]) -> int:
        with self._translate_errors(), self.engine.begin() as connection:
            return sum(
                connection.execute(
                    delete(key_usage).where(
                        key_usage.c.granularity == granularity.value,
                        key_usage.c.bucket < bound,
                    )
                ).rowcount
                for granularity, bound in before.items()
            )

    def change_signal(self) -> "ChangeSignal | None":
        """Push notification of changes: LISTEN/NOTIFY on PostgreSQL, none elsewhere."""
        if self.dialect != "postgresql":
            return None
        from keyguard.storage.notify import PostgresChangeSignal

        conninfo = self.engine.url.set(drivername="postgresql")
        return PostgresChangeSignal(conninfo.render_as_string(hide_password=False), CHANNEL)

    def secret_check(self, proposed: bytes | None = None) -> bytes | None:
        with self._write_lock, self._translate_errors(), self.engine.connect() as connection:
            connection = connection.execution_options(keyguard_write=proposed is not None)
            with connection.begin():
                if proposed is not None:
                    connection.execute(
                        update(meta)
                        .where(meta.c.secret_check.is_(None))
                        .values(secret_check=proposed)
                    )
                stored = connection.execute(select(meta.c.secret_check)).scalar_one()
        return None if stored is None else bytes(stored)

    def replace_secret_check(self, value: bytes) -> None:
        with self._write_lock, self._translate_errors(), self.engine.connect() as connection:
            connection = connection.execution_options(keyguard_write=True)
            with connection.begin():
                connection.execute(update(meta).values(secret_check=value))

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._translate_errors(), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _updating(self) -> Iterator[Connection]:
        """A write transaction that changes no key or account, so moves no revision."""
        with self._write_lock, self._translate_errors(), self.engine.connect() as connection:
            connection = connection.execution_options(keyguard_write=True)
            with connection.begin():
                yield connection

    @contextmanager
    def _writing(self) -> Iterator[tuple[Connection, int]]:
        """A write transaction and the revision its changes carry."""
        with self._write_lock, self._translate_errors(), self.engine.connect() as connection:
            connection = connection.execution_options(keyguard_write=True)
            with connection.begin():
                yield connection, self._advance(connection)

    def _advance(self, connection: Connection) -> int:
        """Move the revision in this write transaction; the revision its changes carry."""
        connection.execute(update(meta).values(revision=meta.c.revision + 1))
        revision: int = connection.execute(select(meta.c.revision)).scalar_one()
        if self.dialect == "postgresql":  # delivered when the transaction commits
            connection.execute(
                text("SELECT pg_notify(:channel, :revision)"),
                {"channel": CHANNEL, "revision": str(revision)},
            )
        return revision

    # -- accounts ---------------------------------------------------------------

    def create_account(
        self,
        name: str,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> tuple[Account, StoredKey]:
        created_at = _now()
        with self._writing() as (connection, revision):
            account_id = _new_id(
                connection.execute(
                    insert(accounts).values(name=name, created_at=created_at, revision=revision)
                )
            )
            account = Account(account_id, name, created_at, revision=revision)
            _audit(connection, account_id, "account.create", actor, after={"name": name})
            key = self._insert_key(
                connection, revision, account_id, digest, sealed_value, settings, actor
            )
        return account, key

    def list_accounts(self) -> list[Account]:
        query = select(accounts).where(accounts.c.status != AccountStatus.DELETED.value)
        with self._reading() as connection:
            return [_account(row) for row in connection.execute(query.order_by(accounts.c.id))]

    def get_account(self, account_id: int) -> Account | None:
        with self._reading() as connection:
            return self._get_account(connection, account_id)

    def _get_account(self, connection: Connection, account_id: int) -> Account | None:
        row = connection.execute(
            select(accounts).where(
                accounts.c.id == account_id, accounts.c.status != AccountStatus.DELETED.value
            )
        ).first()
        return None if row is None else _account(row)

    def set_account_status(
        self, account_id: int, status: AccountStatus, actor: Actor = CLI
    ) -> Account | None:
        with self._writing() as (connection, revision):
            account = self._get_account(connection, account_id)
            if account is None:
                return None
            connection.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(status=status.value, revision=revision)
            )
            _audit(
                connection,
                account_id,
                STATUS_ACTIONS[status],
                actor,
                before={"status": account.status.value},
                after={"status": status.value},
            )
            if status is AccountStatus.DELETED:
                now = datetime.now(UTC)
                connection.execute(
                    update(api_keys)
                    .where(api_keys.c.account_id == account_id, api_keys.c.deleted_at.is_(None))
                    .values(
                        deleted_at=now.replace(microsecond=0),
                        sealed_value=b"",
                        revision=revision,
                        changed_at=now,
                    )
                )
                connection.execute(
                    update(accounts).where(accounts.c.id == account_id).values(key_count=0)
                )
        return replace(account, status=status, revision=revision)

    def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        conditions: list[ColumnElement[bool]] = []
        if query.account_id is not None:
            conditions.append(audit_log.c.account_id == query.account_id)
        if query.key_id is not None:
            conditions.append(audit_log.c.key_id == query.key_id)
        if query.action is not None:
            conditions.append(audit_log.c.action == query.action)
        if query.since is not None:
            conditions.append(audit_log.c.occurred_at >= query.since)
        if query.until is not None:
            conditions.append(audit_log.c.occurred_at < query.until)
        with self._reading() as connection:
            total = connection.execute(
                select(func.count()).select_from(audit_log).where(*conditions)
            ).scalar_one()
            rows = connection.execute(
                select(audit_log)
                .where(*conditions)
                .order_by(audit_log.c.id.desc())
                .offset(query.offset)
                .limit(query.limit)
            )
            return [_audit_record(row) for row in rows], total

    # -- keys -------------------------------------------------------------------

    def create_key(
        self,
        account_id: int,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor = CLI,
    ) -> StoredKey:
        with self._writing() as (connection, revision):
            return self._insert_key(
                connection, revision, account_id, digest, sealed_value, settings, actor
            )

    def _insert_key(
        self,
        connection: Connection,
        revision: int,
        account_id: int,
        digest: bytes,
        sealed_value: bytes,
        settings: KeySettings,
        actor: Actor,
        rolled_from: int | None = None,
    ) -> StoredKey:
        changed_at = datetime.now(UTC)
        created_at = changed_at.replace(microsecond=0)
        credits = _credit_columns(settings, changed_at)
        key_id = _new_id(
            connection.execute(
                insert(api_keys).values(
                    account_id=account_id,
                    digest=digest,
                    sealed_value=sealed_value,
                    created_at=created_at,
                    revision=revision,
                    changed_at=changed_at,
                    rolled_from=rolled_from,
                    **_settings_columns(settings),
                    **credits,
                )
            )
        )
        _count_keys(connection, account_id, +1)
        after = settings_document(settings)
        if rolled_from is not None:
            after["rolled_from"] = rolled_from
        _audit(connection, account_id, "key.create", actor, key_id, after=after)
        return StoredKey(
            key_id,
            account_id,
            digest,
            sealed_value,
            settings,
            created_at,
            revision=revision,
            changed_at=changed_at,
            rolled_from=rolled_from,
            credits_period=credits["credits_period"],
        )

    def import_keys(
        self, account_id: int, keys: Sequence[NewKey], actor: Actor = CLI
    ) -> ImportResult:
        with self._updating() as connection:
            # The revision's row lock orders this batch after every other writer, so the
            # revision it reads is the one it writes, and no digest arrives meanwhile
            # (SQLite: one writer at a time).
            locked = select(meta.c.revision).with_for_update()
            revision = connection.execute(locked).scalar_one() + 1
            changed_at = datetime.now(UTC)
            common = {
                "account_id": account_id,
                "created_at": changed_at.replace(microsecond=0),
                "revision": revision,
                "changed_at": changed_at,
            }
            # Every key goes in, those whose digest is taken are left out by the database,
            # and one look-up then tells which went in: the rows with this revision.
            _insert_many(connection, common, [_import_row(key) for key in keys])
            held = self._held(connection, list({key.digest: None for key in keys}))
            owners = {digest: owner for digest, owner, _id, written in held if written != revision}
            fresh, existing, elsewhere = sort_batch(account_id, keys, owners)
            if not fresh:
                return ImportResult([], existing, elsewhere)
            if self._advance(connection) != revision:
                raise RuntimeError("the revision moved while the batch held its lock")
            id_of = {digest: key_id for digest, _owner, key_id, _written in held}
            created = [id_of[keys[position].digest] for position in fresh]
            result = ImportResult(created, existing, elsewhere)
            _count_keys(connection, account_id, len(created))
            _audit(connection, account_id, "key.import", actor, after=import_document(result))
            return result

    def _held(
        self, connection: Connection, digests: list[bytes]
    ) -> list[tuple[bytes, int, int, int]]:
        """Digest, account, id and revision of every key, deleted ones too, under one
        of ``digests``.

        Written for the driver: SQLAlchemy's expanding ``IN`` renders and binds each of a
        batch's thousands of digests with more work than the look-up itself.
        """
        columns = "SELECT digest, account_id, id, revision FROM api_keys WHERE digest"
        if self.dialect == "postgresql":
            rows = connection.exec_driver_sql(f"{columns} = ANY(%s)", (digests,))
        else:
            marks = ", ".join("?" * len(digests))
            rows = connection.exec_driver_sql(f"{columns} IN ({marks})", tuple(digests))
        return [(bytes(digest), *found) for digest, *found in rows]

    def list_keys(
        self,
        account_id: int,
        label: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[StoredKey]:
        live = self._live_keys(account_id, label)
        query = select(*_LISTED_COLUMNS).where(*live).order_by(api_keys.c.id).limit(limit)
        with self._reading() as connection, connection.begin():
            if offset:
                # The page's first id, through the index alone; then only the page's rows.
                first = self._nth_key(connection, account_id, live, offset, counted=not label)
                if first is None:
                    return []
                query = query.where(api_keys.c.id >= first)
            return _listed(connection.execute(query))

    def _nth_key(
        self,
        connection: Connection,
        account_id: int,
        live: list[ColumnElement[bool]],
        offset: int,
        counted: bool,
    ) -> int | None:
        """The id of the live key after ``offset`` others in id order, or None.

        A deep page is found from the end of the list, which the account's key
        count (``counted``: no filter) tells, so no walk crosses more than half. That
        is the count every write keeps (and ``X-Total-Count`` shows); while processes
        older than 0005 still write, pages from the end are off as that count is.
        """
        ids = select(api_keys.c.id).where(*live)
        total = self._key_count(connection, account_id) if counted else None
        if total is not None and offset > total // 2:
            if offset >= total:
                return None
            ids = ids.order_by(api_keys.c.id.desc()).offset(total - 1 - offset)
        else:
            ids = ids.order_by(api_keys.c.id).offset(offset)
        found = connection.execute(ids.limit(1)).scalar()
        return None if found is None else int(found)

    def count_keys(self, account_id: int, label: str | None = None) -> int:
        with self._reading() as connection:
            if not label:
                return self._key_count(connection, account_id)
            query = select(func.count()).where(*self._live_keys(account_id, label))
            return int(connection.execute(query).scalar() or 0)

    def _key_count(self, connection: Connection, account_id: int) -> int:
        query = select(accounts.c.key_count).where(accounts.c.id == account_id)
        return int(connection.execute(query).scalar() or 0)

    def _live_keys(self, account_id: int, label: str | None) -> list[ColumnElement[bool]]:
        conditions = [api_keys.c.account_id == account_id, api_keys.c.deleted_at.is_(None)]
        if label:
            conditions.append(self._label_contains(label))
        return conditions

    def _label_contains(self, needle: str) -> ColumnElement[bool]:
        """Case-insensitive substring, for every alphabet: SQLite's own case folding
        knows only ASCII, so there keyguard registers Python's ``str.casefold``."""
        if self.dialect == "sqlite":
            folded = func.keyguard_casefold(api_keys.c.label)
            return func.instr(folded, needle.casefold()) > 0
        pattern = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return api_keys.c.label.ilike(f"%{pattern}%", escape="\\")

    def get_key(self, account_id: int, key_id: int) -> StoredKey | None:
        with self._reading() as connection:
            return self._get_key(connection, account_id, key_id)

    def _get_key(self, connection: Connection, account_id: int, key_id: int) -> StoredKey | None:
        row = connection.execute(
            select(api_keys).where(
                api_keys.c.id == key_id,
                api_keys.c.account_id == account_id,
                api_keys.c.deleted_at.is_(None),
            )
        ).first()
        return None if row is None else _key(row)

    def update_key(
        self,
        account_id: int,
        key_id: int,
        changes: KeyChanges,
        actor: Actor = CLI,
        action: Action = "key.update",
    ) -> StoredKey | None:
        with self._writing() as (connection, revision):
            # The meta row lock taken by _writing serialises writers, so this
            # read-modify-write cannot lose a concurrent update's fields.
            key = self._get_key(connection, account_id, key_id)
            if key is None:
                return None
            refuse_activation(key, changes)
            settings = apply(key.settings, changes)
            key = self._rewrite_settings(connection, revision, key, settings, actor, action)
            if not changes.credits:
                return key
            # Only what the request gives is written: leases move ``remaining`` meanwhile.
            columns = _credit_columns(settings, key.changed_at or _now())
            if changes.remaining is None:
                del columns["remaining"]
            connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key.id)
                .values(credits_epoch=api_keys.c.credits_epoch + 1, **columns)
            )
            return replace(
                key,
                credits_epoch=key.credits_epoch + 1,
                credits_period=columns["credits_period"],
            )

    # -- usage credits: leased to processes in blocks ----------------------------

    def lease_credits(self, wanted: Mapping[int, int], now: datetime) -> dict[int, CreditGrant]:
        if not wanted:
            return {}
        ids = list(wanted)
        keys = api_keys.c
        grants: dict[int, CreditGrant] = {}
        with self._updating() as connection:
            for interval in ("daily", "monthly"):
                period = period_of(interval, now)
                connection.execute(
                    update(api_keys)
                    .where(
                        keys.id.in_(ids),
                        keys.refill_interval == interval,
                        keys.credits_period < period,
                        keys.remaining.is_not(None),
                    )
                    .values(remaining=keys.refill_amount, credits_period=period)
                )
            rows = connection.execute(
                select(keys.id, keys.remaining, keys.credits_epoch, keys.credits_period).where(
                    keys.id.in_(ids), keys.remaining.is_not(None), keys.deleted_at.is_(None)
                )
            ).all()
            for row in rows:
                granted = min(wanted[row.id], row.remaining)
                if granted > 0:
                    # Atomic: a concurrent lease that got there first leaves too few
                    # credits for the condition, and this one takes none this time.
                    taken = connection.execute(
                        update(api_keys)
                        .where(
                            keys.id == row.id,
                            keys.remaining >= granted,
                            keys.credits_epoch == row.credits_epoch,
                        )
                        .values(remaining=keys.remaining - granted)
                        .returning(keys.remaining)
                    ).first()
                    if taken is None:
                        continue
                    left = taken.remaining
                else:
                    granted, left = 0, row.remaining
                grants[row.id] = CreditGrant(granted, row.credits_epoch, row.credits_period, left)
        return grants

    def return_credits(self, returned: Mapping[int, CreditGrant]) -> None:
        if not returned:
            return
        keys = api_keys.c
        with self._updating() as connection:
            for key_id, lease in returned.items():
                connection.execute(
                    update(api_keys)
                    .where(
                        keys.id == key_id,
                        keys.credits_epoch == lease.epoch,
                        keys.credits_period == lease.period,
                        keys.remaining.is_not(None),
                    )
                    .values(remaining=keys.remaining + lease.granted)
                )

    def _rewrite_settings(
        self,
        connection: Connection,
        revision: int,
        key: StoredKey,
        settings: KeySettings,
        actor: Actor,
        action: Action,
        noted: Mapping[str, Any] | None = None,
    ) -> StoredKey:
        """Store ``key`` with ``settings``, audited as ``action`` (``noted`` added to
        the record's ``after``)."""
        changed_at = datetime.now(UTC)
        connection.execute(
            update(api_keys)
            .where(api_keys.c.id == key.id)
            .values(revision=revision, changed_at=changed_at, **_settings_columns(settings))
        )
        before = settings_document(key.settings)
        after = {**settings_document(settings), **(noted or {})}
        _audit(connection, key.account_id, action, actor, key.id, before=before, after=after)
        return replace(key, settings=settings, revision=revision, changed_at=changed_at)

    def roll_key(
        self,
        account_id: int,
        key_id: int,
        digest: bytes,
        sealed_value: bytes,
        grace_until: datetime,
        actor: Actor = CLI,
    ) -> tuple[StoredKey, StoredKey] | None:
        with self._writing() as (connection, revision):
            key = self._get_key(connection, account_id, key_id)
            if key is None:
                return None
            old_settings = rolled_settings(key.settings, grace_until, datetime.now(UTC))
            successor = successor_settings(key)
            new = self._insert_key(
                connection, revision, account_id, digest, sealed_value, successor, actor, key.id
            )
            old = self._rewrite_settings(
                connection, revision, key, old_settings, actor, "key.roll", {"rolled_to": new.id}
            )
            return old, new

    def delete_key(self, account_id: int, key_id: int, actor: Actor = CLI) -> StoredKey | None:
        with self._writing() as (connection, revision):
            key = self._get_key(connection, account_id, key_id)
            if key is None:
                return None
            # The row stays as a tombstone for change feeds; its secret does not.
            changed_at = datetime.now(UTC)
            connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(
                    deleted_at=changed_at.replace(microsecond=0),
                    sealed_value=b"",
                    revision=revision,
                    changed_at=changed_at,
                )
            )
            _count_keys(connection, account_id, -1)
            _audit(
                connection,
                account_id,
                "key.delete",
                actor,
                key_id,
                before=settings_document(key.settings),
            )
        return replace(
            key, deleted=True, sealed_value=b"", revision=revision, changed_at=changed_at
        )

    def leak_keys(self, leaks: Sequence[Leak], actor: Actor = CLI) -> list[StoredKey | None]:
        # Most reports name keys that leaked before, or none: a read settles those
        # without taking the write lock or moving the revision.
        with self._reading() as connection:
            known = _keys_by_digest(connection, leaks)
        stored = [_named(known, leak) for leak in leaks]
        pending = [i for i, key in enumerate(stored) if key is not None and is_revocable(key)]
        for start in range(0, len(pending), LEAK_BATCH):
            batch = pending[start : start + LEAK_BATCH]
            with self._writing() as (connection, revision):
                # Again, under the write lock: another process may have revoked some.
                known = _keys_by_digest(connection, [leaks[i] for i in batch])
                leaked_at, changed_at = _now(), datetime.now(UTC)
                revoked: list[StoredKey] = []
                records: list[dict[str, Any]] = []
                for i in batch:
                    key = _named(known, leaks[i])
                    if key is not None and is_revocable(key):
                        settings = leaked_settings(key.settings)
                        noted = {"leaked_at": timestamp(leaked_at), **leaks[i].found}
                        records.append(_audit_row(key, settings, "key.leak", actor, noted))
                        key = replace(
                            key,
                            settings=settings,
                            revision=revision,
                            changed_at=changed_at,
                            leaked_at=leaked_at,
                        )
                        known[key.digest] = key  # named again in this batch: revoked now
                        revoked.append(key)
                    stored[i] = key
                if revoked:
                    _store_settings(connection, revoked)
                    connection.execute(insert(audit_log), records)
        return stored

    def newest_revision(self) -> int:
        with self._reading() as connection:
            newest: int = connection.execute(select(meta.c.revision)).scalar_one()
            return newest

    def changes_since(self, revision: int) -> ChangeFeed:
        keys, changed = _change_queries(revision, select(*_KEY_COLUMNS))
        with self._reading() as connection, connection.begin():
            newest = connection.execute(select(meta.c.revision)).scalar_one()
            key_rows = connection.execute(
                keys.where(api_keys.c.revision <= newest).order_by(api_keys.c.revision)
            )
            found = [_key(row) for row in key_rows]
            account_rows = connection.execute(changed.where(accounts.c.revision <= newest))
            return ChangeFeed(newest, found, [_account(row) for row in account_rows])

    @contextmanager
    def stream_changes(self, revision: int) -> Iterator[KeyStream]:
        """Rows come by a server-side cursor on PostgreSQL (SQLite's cursor streams as
        it is), :data:`STREAM_BATCH` at a time; each key once, in no particular order,
        since an order would cost a first load a sort or an index walk."""
        keys, changed = _change_queries(revision, select(*_state_columns(revision)))
        with self._reading() as connection, connection.begin():
            newest = connection.execute(select(meta.c.revision)).scalar_one()
            account_rows = connection.execute(changed.where(accounts.c.revision <= newest))
            found = [_account(row) for row in account_rows]
            keys = keys.where(api_keys.c.revision <= newest)
            if revision == 0:  # a first load's millions of rows: straight from the driver
                yield KeyStream(newest, found, _states(_driver_batches(connection, keys)))
                return
            streaming = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH)
            yield KeyStream(newest, found, _states(streaming.execute(keys).partitions()))

    @contextmanager
    def stream_digests(self) -> Iterator[DigestStream]:
        with self._reading() as connection, connection.begin():
            newest = connection.execute(select(meta.c.revision)).scalar_one()
            _keys, changed = _change_queries(0, select(api_keys.c.id))
            account_rows = connection.execute(changed.where(accounts.c.revision <= newest))
            found = [_account(row) for row in account_rows]
            live = connection.execute(select(func.sum(accounts.c.key_count))).scalar() or 0
            query = select(api_keys.c.digest, api_keys.c.imported).where(
                api_keys.c.deleted_at.is_(None), api_keys.c.revision <= newest
            )
            rows = (row for batch in _driver_batches(connection, query) for row in batch)
            yield DigestStream(newest, found, int(live), rows)

    def key_states(
        self, digests: Collection[bytes] = (), ids: Collection[int] = ()
    ) -> list[KeyState]:
        wanted = [
            *([api_keys.c.digest.in_(list(digests))] if digests else []),
            *([api_keys.c.id.in_(list(ids))] if ids else []),
        ]
        if not wanted:
            return []
        query = select(*_state_columns(1)).where(api_keys.c.deleted_at.is_(None), or_(*wanted))
        with self._reading() as connection:
            return list(_states([connection.execute(query).all()]))

    def rewrite_keys(self, rewrites: Sequence[KeyRewrite]) -> int:
        if not rewrites:
            return 0
        with self._writing() as (connection, revision):
            result = connection.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == bindparam("key_id"),
                    api_keys.c.digest == bindparam("old_digest"),
                    api_keys.c.deleted_at.is_(None),
                )
                .values(
                    digest=bindparam("new_digest"),
                    sealed_value=bindparam("new_sealed_value"),
                    revision=revision,
                    changed_at=datetime.now(UTC),
                ),
                [
                    {
                        "key_id": rewrite.key_id,
                        "old_digest": rewrite.old_digest,
                        "new_digest": rewrite.digest,
                        "new_sealed_value": rewrite.sealed_value,
                    }
                    for rewrite in rewrites
                ],
            )
            return result.rowcount

    def record_usage(self, used: Mapping[int, datetime], settle: float = 0.0) -> None:
        """One ``UPDATE … FROM (VALUES …)`` per 1,000 keys, in one transaction
        (SQLite, which lacks that form, gets one executemany).

        A row is written only when its stored time is more than ``settle``
        seconds older than the new one: so it never moves back when processes
        flush out of order, and processes that saw a key in the same interval
        write it once between them.
        """
        rows = [(key_id, when, when - timedelta(seconds=settle)) for key_id, when in used.items()]
        with self._translate_errors(), self.engine.begin() as connection:
            if self.dialect == "sqlite":  # no column aliases on VALUES: one statement per row
                connection.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == bindparam("key_id"),
                        or_(
                            api_keys.c.last_used_at.is_(None),
                            api_keys.c.last_used_at < bindparam("before", type_=UTCDateTime),
                        ),
                    )
                    .values(last_used_at=bindparam("used", type_=UTCDateTime)),
                    [{"key_id": i, "used": when, "before": before} for i, when, before in rows],
                )
                return
            for start in range(0, len(rows), USAGE_BATCH):
                batch = values(
                    column("key_id", BigInteger),
                    column("used", UTCDateTime),
                    column("before", UTCDateTime),
                    name="batch",
                ).data(rows[start : start + USAGE_BATCH])
                connection.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == batch.c.key_id,
                        or_(
                            api_keys.c.last_used_at.is_(None),
                            api_keys.c.last_used_at < batch.c.before,
                        ),
                    )
                    .values(last_used_at=batch.c.used)
                )

    # -- webhook delivery ---------------------------------------------------------

    def claim_delivery(self, owner: str, now: datetime, lease: timedelta) -> Delivery | None:
        delivery = webhook_delivery.c
        with self._reading() as connection:
            row = connection.execute(select(webhook_delivery)).one()
        if row.lease_owner not in (None, owner) and row.lease_until > now:
            return None  # read first: a process waiting for the lease writes nothing
        with self._updating() as connection:
            # Another process may have claimed it since the read: only one claim of
            # several at once finds the row still free.
            claimed = connection.execute(
                update(webhook_delivery)
                .where(
                    or_(
                        delivery.lease_owner.is_(None),
                        delivery.lease_owner == owner,
                        delivery.lease_until <= now,
                    )
                )
                .values(lease_owner=owner, lease_until=now + lease)
            )
            if claimed.rowcount == 0:
                return None
            newest = select(func.coalesce(func.max(audit_log.c.id), 0)).scalar_subquery()
            connection.execute(
                update(webhook_delivery)
                .where(delivery.delivered_through.is_(None))
                .values(delivered_through=newest)
            )
            return _delivery(connection.execute(select(webhook_delivery)).one())

    def release_delivery(self, owner: str) -> None:
        with self._updating() as connection:
            connection.execute(
                update(webhook_delivery)
                .where(webhook_delivery.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def pending_events(self, after: int, actions: Collection[str], limit: int) -> list[AuditRecord]:
        with self._reading() as connection:
            rows = connection.execute(
                select(audit_log)
                .where(audit_log.c.id > after, audit_log.c.action.in_(actions))
                .order_by(audit_log.c.id)
                .limit(limit)
            )
            return [_audit_record(row) for row in rows]

    def advance_delivery(self, through: int) -> None:
        delivered = webhook_delivery.c.delivered_through
        with self._updating() as connection:
            connection.execute(
                update(webhook_delivery)
                .where(or_(delivered.is_(None), delivered < through))
                .values(delivered_through=through, retry_event=None, attempts=0, retry_at=None)
            )

    def delay_delivery(self, owner: str, event: int, attempts: int, retry_at: datetime) -> None:
        with self._updating() as connection:
            connection.execute(
                update(webhook_delivery)
                .where(webhook_delivery.c.lease_owner == owner)
                .values(retry_event=event, attempts=attempts, retry_at=retry_at)
            )

    def delivery_backlog(self, actions: Collection[str]) -> int:
        delivered = select(webhook_delivery.c.delivered_through).scalar_subquery()
        with self._reading() as connection:
            return int(
                connection.execute(
                    select(func.count())
                    .select_from(audit_log)
                    .where(audit_log.c.id > delivered, audit_log.c.action.in_(actions))
                ).scalar_one()
            )

    def note_expiries(self, now: datetime, warning: timedelta, since: Sweep | None) -> Sweep | None:
        keys = api_keys.c
        due = [
            keys.deleted_at.is_(None),
            keys.leaked_at.is_(None),
            # expiry_notice(), as a query
            or_(
                and_(
                    keys.expires_at <= now,
                    or_(keys.expired_noted.is_(None), keys.expired_noted != keys.expires_at),
                ),
                and_(
                    keys.expires_at > now,
                    keys.expires_at <= now + warning,
                    or_(keys.expiring_noted.is_(None), keys.expiring_noted != keys.expires_at),
                ),
            ),
        ]
        if since is not None:  # what came due since (ranges of the index), or changed since
            came_due = since.at - _SWEEP_SLACK
            due.append(
                or_(
                    keys.revision > since.revision,
                    and_(keys.expires_at > came_due, keys.expires_at <= now),
                    keys.expires_at > came_due + warning,
                )
            )
        with self._reading() as connection:
            revision = connection.execute(select(meta.c.revision)).scalar_one()
            found = connection.execute(select(keys.id).where(*due).limit(_SWEEP_BATCH)).all()
        if found:
            with self._writing() as (connection, _revision):
                # Read again under the write lock: a process that held the lease before
                # may have given some of these notices since.
                rows = connection.execute(
                    select(api_keys).where(keys.id.in_([row.id for row in found]), *due)
                )
                for row in rows.all():
                    _note_expiry(connection, _key(row), now)
        return since if len(found) == _SWEEP_BATCH else Sweep(now, revision)  # more: again


# A key changed just before a sweep may carry an expiry a little older than the
# sweep's own time (another process's clock, a transaction committing late): each
# sweep looks again this far back.
_SWEEP_SLACK = timedelta(seconds=60)
_SWEEP_BATCH = 1000


def _note_expiry(connection: Connection, key: StoredKey, now: datetime) -> None:
    expires_at = key.settings.expires_at
    assert expires_at is not None
    notice: Action = "key.expire" if expires_at <= now else "key.expiring"
    column = "expired_noted" if notice == "key.expire" else "expiring_noted"
    connection.execute(update(api_keys).where(api_keys.c.id == key.id).values({column: expires_at}))
    after = settings_document(key.settings)
    _audit(connection, key.account_id, notice, KEYGUARD, key.id, after=after)


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(row.delivered_through, row.retry_event, row.attempts, row.retry_at)


def _of_account(account_id: int) -> ColumnElement[bool]:
    """The account's rows of a key's counts, found by the key's primary key.

    ``+ 0`` keeps the account index out of the plan: SQLite would otherwise read
    every bucket of the account's keys in the span (an account of 10,000 keys:
    700 ms for a page's sparklines instead of 1 ms), and only checks the owner.
    """
    return key_usage.c.account_id + 0 == account_id


def _span(granularity: Granularity, since: datetime, until: datetime) -> list[ColumnElement[bool]]:
    return [
        key_usage.c.granularity == granularity.value,
        key_usage.c.bucket >= granularity.floor(since),
        key_usage.c.bucket < until,
    ]


def _store_settings(connection: Connection, keys: Sequence[StoredKey]) -> None:
    """Write each key's settings, revision, change time and leak time: one statement."""
    rows = [
        {
            **_settings_columns(key.settings),
            "revision": key.revision,
            "changed_at": key.changed_at,
            "leaked_at": key.leaked_at,
        }
        for key in keys
    ]
    if not rows:
        return
    names = list(rows[0])
    statement = (
        update(api_keys)
        .where(api_keys.c.id == bindparam("key_id"))
        .values({name: bindparam(f"new_{name}", type_=api_keys.c[name].type) for name in names})
    )
    connection.execute(
        statement,
        [
            {"key_id": key.id, **{f"new_{name}": value for name, value in row.items()}}
            for key, row in zip(keys, rows, strict=True)
        ],
    )


def _audit_row(
    key: StoredKey,
    settings: KeySettings,
    action: Action,
    actor: Actor,
    noted: Mapping[str, Any],
) -> dict[str, Any]:
    """The audit record of ``key`` given ``settings``, for an insert of many."""
    return {
        "account_id": key.account_id,
        "occurred_at": datetime.now(UTC).replace(microsecond=0),
        "action": action,
        "key_id": key.id,
        "actor": actor.kind,
        "actor_key_id": actor.key_id,
        "ip": recorded_address(actor.ip),
        "before": settings_document(key.settings),
        "after": {**settings_document(settings), **noted},
    }


def _audit(
    connection: Connection,
    account_id: int,
    action: Action,
    actor: Actor,
    key_id: int | None = None,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    connection.execute(
        insert(audit_log).values(
            account_id=account_id,
            occurred_at=datetime.now(UTC).replace(microsecond=0),
            action=action,
            key_id=key_id,
            actor=actor.kind,
            actor_key_id=actor.key_id,
            ip=recorded_address(actor.ip),
            before=before,
            after=after,
        )
    )


def _count_keys(connection: Connection, account_id: int, change: int) -> None:
    """Keep the account's count of live keys, which lists report without counting."""
    connection.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(key_count=accounts.c.key_count + change)
    )


def _account(row: Row[Any]) -> Account:
    return Account(row.id, row.name, row.created_at, AccountStatus(row.status), row.revision)


def _audit_record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        account_id=row.account_id,
        occurred_at=row.occurred_at,
        action=row.action,
        key_id=row.key_id,
        actor=Actor(row.actor, row.actor_key_id, row.ip),
        before=row.before,
        after=row.after,
    )


def _new_id(result: CursorResult[Any]) -> int:
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    return int(primary_key[0])


# Change feeds and lists read the JSON columns as text: a first load reads every
# key, and most keys have no allow-list and no scopes, which need no JSON parser.
_KEY_COLUMNS = [
    *(column for column in api_keys.c if column.name not in ("permitted_ips", "scopes")),
    cast(api_keys.c.permitted_ips, Text).label("permitted_ips"),
    cast(api_keys.c.scopes, Text).label("scopes"),
]
_EMPTY_JSON: dict[str, Any] = {"[]": [], "{}": {}}


def _document(value: Any) -> Any:
    """A JSON column's value, whether the driver decoded it or it came as text."""
    if not isinstance(value, str):
        return value
    empty = _EMPTY_JSON.get(value)
    return json.loads(value) if empty is None else empty


def _key(row: Row[Any]) -> StoredKey:
    settings = KeySettings(
        label=row.label,
        active=row.active,
        restricted=row.restricted,
        permitted_ips=tuple(_document(row.permitted_ips)),
        scopes_enabled=row.scopes_enabled,
        scopes=expand(_document(row.scopes)),
        expires_at=row.expires_at,
        ratelimit=RateLimit.of(_document(row.ratelimit)),
        remaining=row.remaining,
        refill=Refill.of(row.refill_amount, row.refill_interval),
    )
    return StoredKey(
        id=row.id,
        account_id=row.account_id,
        digest=row.digest,
        sealed_value=row.sealed_value,
        settings=settings,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revision=row.revision,
        deleted=row.deleted_at is not None,
        changed_at=row.changed_at,
        rolled_from=row.rolled_from,
        leaked_at=row.leaked_at,
        imported=row.imported,
        credits_epoch=row.credits_epoch,
        credits_period=row.credits_period,
    )


def _keys_by_digest(connection: Connection, leaks: Sequence[Leak]) -> dict[bytes, StoredKey]:
    """The keys stored under the leaks' digests, deleted keys' tombstones included."""
    digests = [digest for leak in leaks for digest in leak.digests]
    found: dict[bytes, StoredKey] = {}
    for start in range(0, len(digests), _IN_LIMIT):
        query = select(api_keys).where(api_keys.c.digest.in_(digests[start : start + _IN_LIMIT]))
        found.update((key.digest, key) for key in map(_key, connection.execute(query)))
    return found


def _named(keys: Mapping[bytes, StoredKey], leak: Leak) -> StoredKey | None:
    """The key a leak names: the one under its first digest that is stored."""
    return next((keys[digest] for digest in leak.digests if digest in keys), None)


def _insert_many(
    connection: Connection, common: Mapping[str, Any], rows: list[dict[str, Any]]
) -> None:
    """Insert rows of ``api_keys``, each ``common`` plus its own values, with one
    DBAPI executemany; a row whose digest is taken is left out.

    SQLAlchemy's executemany converts each value of each row by its column's type
    with generic machinery that costs more than the insert itself; here the common
    values are converted once, and of a row's own only those the driver cannot
    take as they are (:data:`_CONVERTED`), each distinct JSON document once.
    (RETURNING the ids would make SQLite insert row by row.)
    """
    dialect = connection.dialect
    names = [*common, *rows[0]]
    dialect_insert = postgresql_insert if dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(api_keys).on_conflict_do_nothing(index_elements=["digest"])
    compiled = statement.compile(dialect=dialect, column_keys=names)
    shared = {name: _converted(dialect, name, value) for name, value in common.items()}
    documents: dict[tuple[str, str], Any] = {}  # keys often share allow-lists and scopes
    for row in rows:
        row.update(shared)
        for name in _CONVERTED:
            value = row[name]
            if value is None:
                continue
            held = (name, repr(value))
            document = documents.get(held)
            if document is None:
                document = documents[held] = _converted(dialect, name, value)
            row[name] = document
    order = compiled.positiontup
    parameters: list[Any] = (
        rows if order is None else [tuple(row[name] for name in order) for row in rows]
    )
    connection.exec_driver_sql(compiled.string, parameters)


# The columns of a key whose values no driver takes as Python has them.
_CONVERTED = ("permitted_ips", "scopes", "ratelimit", "expires_at")


def _converted(dialect: Dialect, name: str, value: Any) -> Any:
    """``value`` of column ``name`` as the driver takes it (what SQLAlchemy would bind)."""
    convert = api_keys.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return value if convert is None or value is None else convert(value)


def _import_row(key: NewKey) -> dict[str, Any]:
    return {
        "digest": key.digest,
        "sealed_value": key.sealed_value,
        "imported": key.imported,
        **_settings_columns(key.settings),
    }


def _change_queries(revision: int, keys: Select[Any]) -> tuple[Select[Any], Select[Any]]:
    """The keys and accounts a change feed after ``revision`` holds, before its end."""
    keys = keys.where(api_keys.c.revision > revision)
    changed = select(accounts).where(accounts.c.revision > revision)
    if revision == 0:
        keys = keys.where(api_keys.c.deleted_at.is_(None))
        changed = changed.where(accounts.c.status != AccountStatus.ACTIVE.value)
    return keys, changed


def _state_columns(revision: int) -> list[ColumnElement[Any]]:
    """What a snapshot reads of a key, in :class:`KeyState`'s order; settings as text.

    A first load is no propagation: it skips ``changed_at``, whose parsing would
    cost every row of millions.
    """
    key = api_keys.c
    return [
        key.id,
        key.digest,
        key.revision,
        key.deleted_at.is_not(None).label("deleted"),
        key.changed_at if revision else null().label("changed_at"),
        key.imported,
        key.account_id,
        and_(key.active, key.leaked_at.is_(None)).label("active"),
        key.restricted,
        cast(key.permitted_ips, Text).label("permitted_ips"),
        key.scopes_enabled,
        cast(key.scopes, Text).label("scopes"),
        type_coerce(key.expires_at, DateTime(timezone=True)),  # no decorator's call per row
        cast(key.ratelimit, Text).label("ratelimit"),
        case((key.remaining.is_(None), null()), else_=key.credits_epoch).label("credits"),
        key.refill_interval,
    ]


def _driver_batches(connection: Connection, query: Select[Any]) -> Iterator[Sequence[Any]]:
    """The rows of ``query`` as the database driver returns them, :data:`STREAM_BATCH`
    at a time: by a server-side cursor on PostgreSQL (SQLite's cursor streams as it
    is). No result processing: a first load's rows are plain tuples, booleans are 0
    and 1 on SQLite, and a time is what the driver gives (see :func:`_timestamp`)."""
    compiled = query.compile(dialect=connection.dialect)
    driver: Any = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        cursor = driver.cursor(name="keyguard_first_load")
        cursor.execute(compiled.string, compiled.params)
    else:
        cursor = driver.cursor()
        order = compiled.positiontup or []
        cursor.execute(compiled.string, [compiled.params[name] for name in order])
    try:
        while batch := cursor.fetchmany(STREAM_BATCH):
            yield batch
    finally:
        cursor.close()


def _states(batches: Iterable[Sequence[Sequence[Any]]]) -> Iterator[KeyState]:
    """Batches of rows of :func:`_state_columns` as key states, each settings text
    parsed once.

    Most keys share their settings: a first load sees the same allow-list, scopes
    and rate limit text again and again, and parses each once.
    """
    networks, expanded, ratelimits = _parsers()
    scopes = _Parsed(lambda text: tuple(expanded[text].items()))
    for batch in batches:
        for row in batch:
            (key_id, digest, revision, deleted, changed_at, imported, account_id, active,
             restricted, ips, scoped, granted, expires, ratelimit, credits,
             refill_interval) = row  # fmt: skip
            yield KeyState(
                key_id,
                digest,
                revision,
                deleted,
                changed_at,
                imported,
                account_id,
                active,
                networks[ips] if restricted else None,
                scopes[granted] if scoped else None,
                None if expires is None else _timestamp(expires),
                None if ratelimit is None else ratelimits[ratelimit],
                credits,
                refill_interval,
            )


# What a list reads of a key, in :func:`_listed`'s order; settings as text, times
# without the decorator's call per value.
_LISTED_COLUMNS = [
    api_keys.c.id,
    api_keys.c.account_id,
    api_keys.c.digest,
    api_keys.c.sealed_value,
    api_keys.c.label,
    api_keys.c.active,
    api_keys.c.restricted,
    cast(api_keys.c.permitted_ips, Text),
    api_keys.c.scopes_enabled,
    cast(api_keys.c.scopes, Text),
    type_coerce(api_keys.c.expires_at, DateTime(timezone=True)),
    cast(api_keys.c.ratelimit, Text),
    api_keys.c.remaining,
    api_keys.c.refill_amount,
    api_keys.c.refill_interval,
    type_coerce(api_keys.c.created_at, DateTime(timezone=True)),
    type_coerce(api_keys.c.last_used_at, DateTime(timezone=True)),
    api_keys.c.revision,
    type_coerce(api_keys.c.changed_at, DateTime(timezone=True)),
    api_keys.c.rolled_from,
    type_coerce(api_keys.c.leaked_at, DateTime(timezone=True)),
    api_keys.c.imported,
    api_keys.c.credits_epoch,
    api_keys.c.credits_period,
]


def _listed(rows: Result[tuple[Any, ...]]) -> list[StoredKey]:
    """Live keys from rows of :data:`_LISTED_COLUMNS`, each settings text parsed once.

    The keys of a list share their settings more often than not, so they share
    what those parse to too.
    """
    networks, scopes, ratelimits = _parsers()
    keys = []
    found: Sequence[Sequence[Any]] = rows.all()
    for row in found:
        (key_id, account_id, digest, sealed, label, active, restricted, ips, scoped, granted,
         expires, ratelimit, remaining, refill_amount, refill_interval, created, used,
         revision, changed, rolled_from, leaked, imported, epoch, period) = row  # fmt: skip
        settings = KeySettings(
            label,
            active,
            restricted,
            networks[ips],
            scoped,
            scopes[granted],
            _utc(expires),
            None if ratelimit is None else ratelimits[ratelimit],
            remaining,
            Refill.of(refill_amount, refill_interval),
        )
        times = _utc(created), _utc(used), _utc(changed), _utc(leaked)
        created, used, changed, leaked = times
        keys.append(StoredKey(key_id, account_id, digest, sealed, settings, created, used,
                              revision, False, changed, rolled_from, leaked, imported, epoch,
                              period))  # fmt: skip
    return keys


def _utc(value: Any) -> Any:
    """A stored time (or None) as :class:`~keyguard.storage.tables.UTCDateTime` gives it."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parsers() -> tuple["_Parsed", "_Parsed", "_Parsed"]:
    """Allow-list, scopes (expanded) and rate-limit texts, each parsed when first met."""
    return (
        _Parsed(lambda text: tuple(_document(text))),
        _Parsed(lambda text: expand(_document(text))),
        _Parsed(lambda text: RateLimit.of(_document(text))),
    )


class _Parsed(dict[str, Any]):
    """Settings texts and what they parse to, each parsed when first asked for."""

    LIMIT = 10_000  # keys with settings all their own would make it a copy of every row

    def __init__(self, parse: Callable[[str], Any]) -> None:
        super().__init__()
        self._parse = parse

    def __missing__(self, text: str) -> Any:
        if len(self) >= self.LIMIT:
            self.clear()
        parsed = self[text] = self._parse(text)
        return parsed


def _timestamp(value: datetime | str) -> float:
    """A stored time as POSIX seconds; SQLite's come without their zone, which is UTC
    (and, straight from its driver, as text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).timestamp()


def _settings_columns(settings: KeySettings) -> dict[str, Any]:
    """The columns of ``settings`` but the credits, which leases move meanwhile."""
    columns = {**settings_document(settings), "expires_at": settings.expires_at}
    del columns["remaining"], columns["refill"]
    return columns


def _credit_columns(settings: KeySettings, now: datetime) -> dict[str, Any]:
    refill = settings.refill
    interval = None if refill is None else refill.interval
    return {
        "remaining": settings.remaining,
        "refill_amount": None if refill is None else refill.amount,
        "refill_interval": interval,
        "credits_period": period_of(interval, now),
    }


__all__ = ["SQLStore", "create_engine_for"]
