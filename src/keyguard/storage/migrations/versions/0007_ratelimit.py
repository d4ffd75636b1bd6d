"""Keys with a rate limit ({"limit": N, "duration": S}: N requests per S seconds),
and the counts processes share to enforce it when no Redis is configured.

Revision ID: 0007
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
# 0006 (webhooks) is not on main yet: this follows main's head, 0009, until it is.
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable with no default: existing keys have no limit, and no row is rewritten.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("ratelimit", sa.JSON(none_as_null=True), nullable=True))
    whole = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    op.create_table(
        "ratelimit_counts",
        sa.Column("key_id", whole, primary_key=True),
        sa.Column("duration", sa.Integer, primary_key=True),
        sa.Column("window", whole, primary_key=True),
        sa.Column("process", sa.String(64), primary_key=True),
        sa.Column("admitted", sa.BigInteger, nullable=False),
        sa.Column("claimed", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ratelimit_processes",
        sa.Column("process", sa.String(64), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ratelimit_processes")
    op.drop_table("ratelimit_counts")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("ratelimit")
