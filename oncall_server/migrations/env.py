"""Alembic environment: runs on the connection that oncall_server.storage.migrate hands it."""

from __future__ import annotations

from alembic import context

from oncall_server.storage import dialects
from oncall_server.storage.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=dialects.of(connection).batch_alter,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
