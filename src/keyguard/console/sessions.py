"""Console sessions and one-time sign-in links, shared by every worker and instance.

A session id and a link token are random secrets the browser holds; the database
keeps only their SHA-256 hashes, so reading it signs no one in. A session belongs
to an account and, when it began with a key, to that key: the console ends it as
soon as the key snapshot says the key or the account may no longer be used.

:class:`SQLSessions` keeps them in keyguard's database (``console_sessions`` and
``console_links``, built by migration 0008); :class:`MemorySessions` keeps them
in the process, for ``memory://`` deployments, which are one process anyway.
"""

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)

from keyguard.storage import Store, recorded_address
from keyguard.storage.tables import UTCDateTime

IDLE_TIMEOUT = timedelta(minutes=30)
LINK_LIFETIME = timedelta(minutes=15)
# A session's last use is written at most this often: a page view costs a read only.
SEEN_RESOLUTION = timedelta(seconds=60)
_NONCE_BYTES = 12

_ID = BigInteger().with_variant(Integer, "sqlite")
_metadata = MetaData()
console_sessions = Table(
    "console_sessions",
    _metadata,
    Column("id_hash", LargeBinary(32), primary_key=True),
    Column("account_id", _ID, nullable=False),
    Column("key_id", _ID, nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("flash", LargeBinary, nullable=True),
)
console_links = Table(
    "console_links",
    _metadata,
    Column("id_hash", LargeBinary(32), primary_key=True),
    Column("account_id", _ID, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
)


def now() -> datetime:
    return datetime.now(UTC)


def new_secret() -> str:
    """A session id or link token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hashed(secret: str) -> bytes:
    """What the database keeps of a session id or a link token."""
    return hashlib.sha256(secret.encode()).digest()


def derived(session_id: str, purpose: bytes) -> bytes:
    """A key only the holder of ``session_id`` can compute (CSRF token, flash key)."""
    return hmac.new(session_id.encode(), purpose, hashlib.sha256).digest()


def seal_flash(session_id: str, secret: str) -> bytes:
    """A new key's secret, sealed so that only this session's browser can open it."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(derived(session_id, b"flash")).encrypt(nonce, secret.encode(), None)


def open_flash(session_id: str, sealed: bytes) -> str | None:
    try:
        plain = AESGCM(derived(session_id, b"flash")).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None
        )
    except InvalidTag:
        return None
    return plain.decode()


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: whose account, by which key (``None`` after a one-time link)."""

    account_id: int
    key_id: int | None
    client_ip: str | None
    created_at: datetime
    seen_at: datetime
    flash: bytes | None = None

    def idle(self, at: datetime) -> bool:
        return at - self.seen_at >= IDLE_TIMEOUT


class SessionStore(Protocol):
    """Where sessions and links live; each method is one transaction."""

    def create(self, id_hash: bytes, session: Session) -> None: ...

    def get(self, id_hash: bytes) -> Session | None: ...

    def touch(self, id_hash: bytes, at: datetime) -> None:
        """Note a use of the session, which keeps it from going idle."""

    def set_flash(self, id_hash: bytes, flash: bytes | None) -> None: ...

    def take_flash(self, id_hash: bytes) -> bytes | None:
        """The session's flash, removed in the same step: it is shown once."""

    def end(self, id_hash: bytes) -> None: ...

    def end_idle(self, at: datetime) -> int:
        """Remove sessions idle at ``at`` and links expired by then; how many sessions."""

    def create_link(self, id_hash: bytes, account_id: int, expires_at: datetime) -> None: ...

    def use_link(self, id_hash: bytes, at: datetime) -> int | None:
        """The account of an unused, unexpired link, which is then used up; else None.

        Of two requests racing with one link, exactly one gets the account.
        """


class SQLSessions:
    """Sessions and links in keyguard's database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _write(self) -> Connection:
        # On SQLite, BEGIN IMMEDIATE: writers queue on the lock instead of failing.
        return self._engine.connect().execution_options(keyguard_write=True)

    def create(self, id_hash: bytes, session: Session) -> None:
        with self._write() as connection, connection.begin():
            connection.execute(
                insert(console_sessions).values(
                    id_hash=id_hash,
                    account_id=session.account_id,
                    key_id=session.key_id,
                    client_ip=recorded_address(session.client_ip),
                    created_at=session.created_at,
                    seen_at=session.seen_at,
                )
            )

    def get(self, id_hash: bytes) -> Session | None:
        table = console_sessions
        with self._engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.id_hash == id_hash)).first()
        if row is None:
            return None
        flash = None if row.flash is None else bytes(row.flash)
        return Session(
            row.account_id, row.key_id, row.client_ip, row.created_at, row.seen_at, flash
        )

    def touch(self, id_hash: bytes, at: datetime) -> None:
        table = console_sessions
        with self._write() as connection, connection.begin():
            connection.execute(update(table).where(table.c.id_hash == id_hash).values(seen_at=at))

    def set_flash(self, id_hash: bytes, flash: bytes | None) -> None:
        table = console_sessions
        with self._write() as connection, connection.begin():
            connection.execute(update(table).where(table.c.id_hash == id_hash).values(flash=flash))

    def take_flash(self, id_hash: bytes) -> bytes | None:
        table = console_sessions
        with self._write() as connection, connection.begin():
            found = connection.execute(
                select(table.c.flash).where(table.c.id_hash == id_hash).with_for_update()
            ).scalar()
            if found is None:
                return None
            connection.execute(update(table).where(table.c.id_hash == id_hash).values(flash=None))
        return bytes(found)

    def end(self, id_hash: bytes) -> None:
        with self._write() as connection, connection.begin():
            connection.execute(
                delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
            )

    def end_idle(self, at: datetime) -> int:
        with self._write() as connection, connection.begin():
            ended = connection.execute(
                delete(console_sessions).where(console_sessions.c.seen_at <= at - IDLE_TIMEOUT)
            ).rowcount
            connection.execute(delete(console_links).where(console_links.c.expires_at <= at))
        return int(ended)

    def create_link(self, id_hash: bytes, account_id: int, expires_at: datetime) -> None:
        with self._write() as connection, connection.begin():
            connection.execute(
                insert(console_links).values(
                    id_hash=id_hash, account_id=account_id, expires_at=expires_at
                )
            )

    def use_link(self, id_hash: bytes, at: datetime) -> int | None:
        table = console_links
        unused = (
            (table.c.id_hash == id_hash) & table.c.used_at.is_(None) & (table.c.expires_at > at)
        )
        with self._write() as connection, connection.begin():
            # One conditional UPDATE: of two concurrent uses, only one matches the row.
            if connection.execute(update(table).where(unused).values(used_at=at)).rowcount != 1:
                return None
            account: int = connection.execute(
                select(table.c.account_id).where(table.c.id_hash == id_hash)
            ).scalar_one()
        return account


class MemorySessions:
    """Sessions and links in this process, for ``memory://`` deployments."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[bytes, Session] = {}
        self._links: dict[bytes, tuple[int, datetime]] = {}

    def create(self, id_hash: bytes, session: Session) -> None:
        with self._lock:
            self._sessions[id_hash] = session

    def get(self, id_hash: bytes) -> Session | None:
        return self._sessions.get(id_hash)

    def touch(self, id_hash: bytes, at: datetime) -> None:
        self._change(id_hash, seen_at=at)

    def set_flash(self, id_hash: bytes, flash: bytes | None) -> None:
        self._change(id_hash, flash=flash)

    def take_flash(self, id_hash: bytes) -> bytes | None:
        with self._lock:
            session = self._sessions.get(id_hash)
            if session is None or session.flash is None:
                return None
            self._sessions[id_hash] = replace(session, flash=None)
            return session.flash

    def end(self, id_hash: bytes) -> None:
        with self._lock:
            self._sessions.pop(id_hash, None)

    def end_idle(self, at: datetime) -> int:
        with self._lock:
            idle = [key for key, session in self._sessions.items() if session.idle(at)]
            for key in idle:
                del self._sessions[key]
            self._links = {k: v for k, v in self._links.items() if v[1] > at}
        return len(idle)

    def create_link(self, id_hash: bytes, account_id: int, expires_at: datetime) -> None:
        with self._lock:
            self._links[id_hash] = (account_id, expires_at)

    def use_link(self, id_hash: bytes, at: datetime) -> int | None:
        with self._lock:
            link = self._links.pop(id_hash, None)
        if link is None or link[1] <= at:
            return None
        return link[0]

    def _change(self, id_hash: bytes, **fields: object) -> None:
        with self._lock:
            session = self._sessions.get(id_hash)
            if session is not None:
                self._sessions[id_hash] = replace(session, **fields)  # type: ignore[arg-type]


def open_sessions(store: Store) -> SessionStore:
    """The session store beside ``store``: its database, or this process for memory://."""
    from keyguard.storage.sql import SQLStore

    if isinstance(store, SQLStore):
        return SQLSessions(store.engine)
    return MemorySessions()
