"""A check value of the server secret, so that a start with another secret is refused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Left empty here: only a running keyguard knows the secret, and writes the
    # value at its first start.
    with op.batch_alter_table("keyguard_meta") as batch:
        batch.add_column(sa.Column("secret_check", sa.LargeBinary(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keyguard_meta") as batch:
        batch.drop_column("secret_check")
