"""Foundation: conversations, vault, used tokens, audit; data keys on PostgreSQL.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("comm_method", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("slot_hash", sa.String(64), unique=True, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_activity", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.Column("purge_at", sa.Float, nullable=False),
        sa.Column("idle_seconds", sa.Integer, nullable=False),
    )
    op.create_index("ix_conversations_purge_at", "conversations", ["purge_at"])
    op.create_table(
        "vault_entries",
        sa.Column("conversation_id", sa.String(32), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "used_tokens",
        sa.Column("replay_key", sa.String(100), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_used_tokens_expires_at", "used_tokens", ["expires_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_events_conversation_id", "audit_events", ["conversation_id"])
    if op.get_bind().dialect.name == "postgresql":
        # UNLOGGED: never written to the WAL, so neither streaming replicas nor WAL-based
        # backups see data keys; truncated after a crash (residents then re-identify).
        op.execute(
            "CREATE UNLOGGED TABLE data_keys ("
            " conversation_id VARCHAR(32) PRIMARY KEY,"
            " key BYTEA NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE data_keys")
    op.drop_table("audit_events")
    op.drop_table("used_tokens")
    op.drop_table("vault_entries")
    op.drop_table("conversations")
