"""The relational schema, shared by every SQL dialect keyguard supports.

Migrations under ``migrations/`` build it; this module is what queries use.
Times are stored as UTC; scope levels and allow-lists as small JSON documents, so
that a deployment with its own scope groups needs no schema change.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TypeDecorator,
    text,
)

from keyguard.domain.counts import OUTCOMES


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect, SQLite included."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# One row: the revision of the newest change to any key. Every write bumps it in
# its own transaction; the row lock orders writers, so change feeds see no gaps.
# ``secret_check`` is derived from the server secret the database was set up with
# (never the secret itself), so that a start with another secret is refused.
meta = Table(
    "keyguard_meta",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("secret_check", LargeBinary(32), nullable=True),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("revision", BigInteger, nullable=False, server_default="0", index=True),
    Column("key_count", BigInteger, nullable=False, server_default="0"),  # live keys
    sqlite_autoincrement=True,
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False, index=True),
    Column("label", String(255), nullable=False),
    Column("digest", LargeBinary(32), nullable=False, unique=True),
    Column("sealed_value", LargeBinary, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("restricted", Boolean, nullable=False),
    Column("permitted_ips", JSON, nullable=False),
    Column("scopes_enabled", Boolean, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("deleted_at", UTCDateTime, nullable=True),
    Column("revision", BigInteger, nullable=False, index=True),
    Column("changed_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("rolled_from", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("leaked_at", UTCDateTime, nullable=True),
    # The expiry each notice (key.expiring, key.expire) was given for: once per expiry.
    Column("expiring_noted", UTCDateTime, nullable=True),
    Column("expired_noted", UTCDateTime, nullable=True),
    Index("ix_api_keys_expires_at", "expires_at"),
    # {"limit": N, "duration": S}; NULL: no rate limit
    Column("ratelimit", JSON(none_as_null=True), nullable=True),
    # "value" or "sha256" for a key brought in by `keyguard import`; NULL: made here
    Column("imported", String(8), nullable=True),
    # Usage credits (keyguard.credits): what is left, less what processes hold in
    # leases; NULL: unlimited. The epoch moves with every change of the credits, so
    # that leases taken before it are dropped rather than given back; the period is
    # the refill period (domain.credits.period_of) last refilled.
    Column("remaining", BigInteger, nullable=True),
    Column("refill_amount", BigInteger, nullable=True),
    Column("refill_interval", String(8), nullable=True),
    Column("credits_epoch", BigInteger, nullable=False, server_default="0"),
    Column("credits_period", BigInteger, nullable=False, server_default="0"),
    Index(
        "ix_api_keys_live",
        "account_id",
        "id",
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
    sqlite_autoincrement=True,
)

# Every change to a key or an account, written in the transaction that made it.
# ``before`` and ``after`` hold settings, never a secret.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("action", String(32), nullable=False),
    Column("key_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("actor", String(16), nullable=False),
    Column("actor_key_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("ip", String(64), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
    Index("ix_audit_log_account_id_id", "account_id", "id"),
    sqlite_autoincrement=True,
)

# One row: how far webhook delivery has got through the audit trail (the outbox),
# and which process holds the lease to deliver. A table of its own, so that
# delivery never waits for ``keyguard_meta``'s row lock, which every writer takes.
webhook_delivery = Table(
    "webhook_delivery",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("delivered_through", BigInteger, nullable=True),  # None until first switched on
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("retry_event", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retry_at", UTCDateTime, nullable=True),
)

# Requests per key, counted by each process and added up at every usage flush: one row
# per key, granularity ("minute", "hour", "day") and bucket start. The columns are the
# outcomes of keyguard.usage.Outcome.
key_usage = Table(
    "key_usage",
    metadata,
    Column("key_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("granularity", String(6), primary_key=True),
    Column("bucket", UTCDateTime, primary_key=True),
    Column("account_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    *(Column(name, BigInteger, nullable=False, server_default="0") for name in OUTCOMES),
    Index("ix_key_usage_account", "account_id", "granularity", "bucket"),
)

# Rate-limit counts that processes share when no Redis is configured
# (keyguard.storage.counters): each process's total per key and window, kept a
# few windows, and when each process last synchronised.
ratelimit_counts = Table(
    "ratelimit_counts",
    metadata,
    Column("key_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("duration", Integer, primary_key=True),
    Column("window", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("process", String(64), primary_key=True),
    Column("admitted", BigInteger, nullable=False),
    Column("claimed", BigInteger, nullable=False),  # what it may reach before its next sync
)
ratelimit_processes = Table(
    "ratelimit_processes",
    metadata,
    Column("process", String(64), primary_key=True),
    Column("seen_at", Float, nullable=False),  # POSIX seconds
)
