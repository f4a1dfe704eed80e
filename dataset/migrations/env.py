"""Alembic environment: migrations run on the connection dataset.db.migrate hands over.

There is no alembic.ini and no URL here: the service migrates its own database at start-up, on
SQLite and PostgreSQL alike (see dataset/db.py).
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
