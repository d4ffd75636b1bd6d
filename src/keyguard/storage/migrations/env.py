"""Alembic environment: migrations always run on a connection keyguard provides."""

from alembic import context

from keyguard.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
