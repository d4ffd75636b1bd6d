"""Keys with a life (an expiry, the key a rolled key replaced, when a key leaked), and
lists that scale (each account's count of live keys, an index of live keys by account).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from keyguard.storage.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns with no default: existing keys never expire, were not
    # rolled and did not leak, and adding them rewrites no row.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime, nullable=True))
        batch.add_column(
            sa.Column("rolled_from", sa.BigInteger().with_variant(sa.Integer, "sqlite"))
        )
        batch.add_column(sa.Column("leaked_at", UTCDateTime, nullable=True))
    # A page of keys, and their count, without reading deleted rows: the count is kept
    # by every write, as counting a million index entries takes tens of milliseconds.
    op.create_index(
        "ix_api_keys_live",
        "api_keys",
        ["account_id", "id"],
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("key_count", sa.BigInteger, nullable=False, server_default="0"))
    op.execute(
        "UPDATE accounts SET key_count = (SELECT count(*) FROM api_keys"
        " WHERE api_keys.account_id = accounts.id AND api_keys.deleted_at IS NULL)"
    )


def downgrade() -> None:
    # Not in batch mode: on SQLite that rebuilds the table, which the keys' foreign
    # keys forbid. Both databases drop a column in place (SQLite since 3.35).
    op.execute("ALTER TABLE accounts DROP COLUMN key_count")
    op.drop_index("ix_api_keys_live", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("leaked_at")
        batch.drop_column("rolled_from")
        batch.drop_column("expires_at")
