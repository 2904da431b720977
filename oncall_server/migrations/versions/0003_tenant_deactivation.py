"""tenants: deactivated_at (a deactivated tenant's tokens and keys stop working)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:02:41.517203
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import oncall_server.storage.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deactivated_at", oncall_server.storage.models.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("deactivated_at")
