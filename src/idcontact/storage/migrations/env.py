"""Alembic environment: always runs on a connection handed over by ``idcontact.storage.db``."""

from alembic import context

from idcontact.storage.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
