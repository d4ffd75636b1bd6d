"""Account status (suspend, resume, delete) in the change feed, and the audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from keyguard.storage.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="active")
        )
        batch.add_column(sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_accounts_revision", "accounts", ["revision"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("account_id", _ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("key_id", _ID, nullable=True),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("actor_key_id", _ID, nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_account_id_id", "audit_log", ["account_id", "id"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("ix_accounts_revision", "accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("revision")
        batch.drop_column("status")
