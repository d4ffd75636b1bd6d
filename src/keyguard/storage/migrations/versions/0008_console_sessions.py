"""The web console's sessions and one-time sign-in links.

Both are looked up by a SHA-256 hash of their secret: the database never holds a
value that would sign anyone in. ``flash`` holds a new key's secret between the
POST that made it and the page that shows it once, sealed under a key derived
from the session id, which only the browser has.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from keyguard.storage.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("account_id", _ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_id", _ID, nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False, index=True),
        sa.Column("flash", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "console_links",
        sa.Column("id_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("account_id", _ID, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
        sa.Column("used_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("console_links")
    op.drop_table("console_sessions")
