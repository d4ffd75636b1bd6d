"""Per-key request counts by minute, hour and day.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from keyguard.storage.tables import UTCDateTime

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("key_id", _ID, primary_key=True),
        sa.Column("granularity", sa.String(6), primary_key=True),
        sa.Column("bucket", UTCDateTime, primary_key=True),
        sa.Column("account_id", _ID, nullable=False),
        *(
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
            for name in ("allowed", "unauthorized", "forbidden", "rate_limited", "no_credits")
        ),
    )
    op.create_index("ix_key_usage_account", "key_usage", ["account_id", "granularity", "bucket"])


def downgrade() -> None:
    op.drop_index("ix_key_usage_account", "key_usage")
    op.drop_table("key_usage")
