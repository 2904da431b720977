"""incidents: the (tenant_id, status, id) index, which 0001 lost to a name collision

The naming convention names an index after its first column, so this index and (tenant_id, id)
were both ix_incidents_tenant_id and only the second was ever created. Listing a tenant's open
incidents (the console's and the CLI's default view) needs it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 19:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.create_index("ix_incidents_tenant_id_status", ["tenant_id", "status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_incidents_tenant_id_status")
