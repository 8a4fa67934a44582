"""The phone channel: link codes and call details on conversations, failed link attempts,
agents' phone endpoints.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PHONE_COLUMNS = (
    sa.Column("link_hash", sa.String(64), nullable=True),
    sa.Column("link_shown", sa.Integer, nullable=True),
    sa.Column("linked_at", sa.Float, nullable=True),
    sa.Column("link_detail", sa.Text, nullable=True),
    sa.Column("hijack_at", sa.Float, nullable=True),
    sa.Column("call_ref_hash", sa.String(64), nullable=True),
    sa.Column("call_state", sa.String(16), nullable=True),
)


def upgrade() -> None:
    for column in PHONE_COLUMNS:
        op.add_column("conversations", column)
    # Indexes, not column constraints: SQLite cannot add a UNIQUE column to a table.
    op.create_index("ix_conversations_link_hash", "conversations", ["link_hash"], unique=True)
    op.create_index(
        "ix_conversations_call_ref_hash", "conversations", ["call_ref_hash"], unique=True
    )
    op.create_table(
        "link_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("caller_key", sa.String(80), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_link_failures_tenant_at", "link_failures", ["tenant", "at"])
    op.add_column("agents", sa.Column("phone_endpoint", sa.String(100), nullable=True))


def downgrade() -> None:
    op.drop_column("agents", "phone_endpoint")
    op.drop_index("ix_link_failures_tenant_at", "link_failures")
    op.drop_table("link_failures")
    op.drop_index("ix_conversations_call_ref_hash", "conversations")
    op.drop_index("ix_conversations_link_hash", "conversations")
    for column in reversed(PHONE_COLUMNS):
        op.drop_column("conversations", column.name)
