"""Keys with a life: an expiry, the key a rolled key replaced, and when a key leaked.

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


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("leaked_at")
        batch.drop_column("rolled_from")
        batch.drop_column("expires_at")
