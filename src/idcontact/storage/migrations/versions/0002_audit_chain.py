"""Audit events per tenant, in a hash chain.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "audit_events",
        sa.Column("tenant", sa.String(64), nullable=False, server_default="default"),
    )
    op.add_column("audit_events", sa.Column("seq", sa.Integer, nullable=True))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.String(64), nullable=True))
    op.create_index("ix_audit_events_tenant_id", "audit_events", ["tenant", "id"])
    op.create_index("ix_audit_events_tenant_seq", "audit_events", ["tenant", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_events_tenant_seq", "audit_events")
    op.drop_index("ix_audit_events_tenant_id", "audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
        batch.drop_column("tenant")
