"""Webhook delivery: how far it has got through the audit trail, and who delivers;
which expiry notices each key was given.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

from keyguard.storage.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    delivery = op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivered_through", sa.BigInteger, nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("retry_event", sa.BigInteger, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_at", UTCDateTime, nullable=True),
    )
    # Nothing delivered yet: the first process with webhooks switched on starts after
    # the newest audit record, rather than announcing the whole history.
    op.bulk_insert(delivery, [{"id": 1, "attempts": 0}])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expiring_noted", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("expired_noted", UTCDateTime, nullable=True))
    # The sweep for expiry notices reads keys by expiry time.
    op.create_index("ix_api_keys_expires_at", "api_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_expires_at", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expired_noted")
        batch.drop_column("expiring_noted")
    op.drop_table("webhook_delivery")
