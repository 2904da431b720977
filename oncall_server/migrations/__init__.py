"""Alembic migrations (run with ``oncall-server migrate``)."""
