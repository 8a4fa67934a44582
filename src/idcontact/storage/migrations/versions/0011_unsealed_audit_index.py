"""An index of the audit events not sealed yet, in id order.

The sealer asks for them every second. With only ``(tenant, id)`` and ``(tenant, seq)`` to go
by, PostgreSQL walked the events in id order from the oldest and skipped every sealed one: the
whole audit log, each time (at 60,000 events ~10 ms; a year's log would take seconds). This
index holds only the unsealed ones, a second's worth. SQLite needs none: its ``(tenant, seq)``
index keeps the rows with no ``seq`` in id order (the rowid) and is read from there.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_audit_events_unsealed",
            "audit_events",
            ["tenant", "id"],
            postgresql_where=sa.text("seq IS NULL"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_audit_events_unsealed", "audit_events")
