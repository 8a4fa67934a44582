"""Registrations of contacts in the Klantinteracties API (klantinteracties.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "klantinteracties_registrations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("give_up_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(32), nullable=True),
        sa.Column("last_step", sa.String(32), nullable=True),
        sa.Column("partij_uuid", sa.String(36), nullable=True),
        sa.Column("klantcontact_uuid", sa.String(36), nullable=True),
        sa.Column("betrokkene_uuid", sa.String(36), nullable=True),
        sa.Column("internetaak_uuid", sa.String(36), nullable=True),
        sa.Column("nummer", sa.String(32), nullable=True),
        sa.Column("nonce", sa.LargeBinary(12), nullable=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=True),
    )
    op.create_index(
        "ix_registrations_conversation",
        "klantinteracties_registrations",
        ["tenant", "conversation_id"],
        unique=True,
    )
    op.create_index(
        "ix_registrations_due",
        "klantinteracties_registrations",
        ["tenant", "state", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_registrations_due", "klantinteracties_registrations")
    op.drop_index("ix_registrations_conversation", "klantinteracties_registrations")
    op.drop_table("klantinteracties_registrations")
