"""Queues and agents: queue columns on conversations, agents, memberships, sessions.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

QUEUE_COLUMNS = (
    sa.Column("queue", sa.String(64), nullable=True),
    sa.Column("channel", sa.String(16), nullable=True),
    sa.Column("waiting_since", sa.Float, nullable=True),
    sa.Column("agent_id", sa.String(32), nullable=True),
    sa.Column("offer_expires", sa.Float, nullable=True),
    sa.Column("connected_at", sa.Float, nullable=True),
    sa.Column("wrap_up_until", sa.Float, nullable=True),
)


def upgrade() -> None:
    for column in QUEUE_COLUMNS:
        op.add_column("conversations", column)
    op.create_index("ix_conversations_agent_id", "conversations", ["agent_id"])
    op.create_index("ix_conversations_tenant_state", "conversations", ["tenant", "state"])
    op.create_table(
        "agents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("username", sa.String(100), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("totp_secret", sa.Text, nullable=True),
        sa.Column("totp_last_step", sa.Integer, nullable=True),
        sa.Column("enrol_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("enrol_expires", sa.Float, nullable=True),
        sa.Column("disabled", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("presence", sa.String(16), nullable=False),
        sa.Column("presence_since", sa.Float, nullable=False),
    )
    op.create_table(
        "agent_memberships",
        sa.Column("agent_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("queues", sa.Text, nullable=False),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.String(32), nullable=False, index=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(80), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "queue_stats",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column("handle_seconds", sa.Float, nullable=False),
        sa.Column("handled", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("queue_stats", "login_failures", "agent_sessions", "agent_memberships", "agents"):
        op.drop_table(table)
    op.drop_index("ix_conversations_tenant_state", "conversations")
    op.drop_index("ix_conversations_agent_id", "conversations")
    with op.batch_alter_table("conversations") as batch:
        for column in reversed(QUEUE_COLUMNS):
            batch.drop_column(column.name)
