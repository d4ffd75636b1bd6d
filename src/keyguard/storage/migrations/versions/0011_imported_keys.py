"""Keys brought over from another system by ``keyguard import``.

``imported`` is ``"value"`` for a key imported by its value (stored like keyguard's
own) and ``"sha256"`` for one imported by the SHA-256 digest another system kept:
its ``sealed_value`` is empty, since its secret was never known here.

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("imported", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("imported")
