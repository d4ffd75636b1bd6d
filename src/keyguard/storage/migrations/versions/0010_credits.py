"""Usage credits: what a key has left (NULL: unlimited), its refill, and the epoch
and refill period that leases of credits are taken under.

Revision ID: 0010
Revises: 0011
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable or with a server default: existing keys are unlimited, no row is rewritten.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("remaining", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("refill_amount", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("refill_interval", sa.String(8), nullable=True))
        batch.add_column(
            sa.Column("credits_epoch", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("credits_period", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "credits_period",
            "credits_epoch",
            "refill_interval",
            "refill_amount",
            "remaining",
        ):
            batch.drop_column(column)
