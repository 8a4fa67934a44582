"""The contact form: one-time reading links and re-identifications, as keyed hashes only.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "form_questions",
        sa.Column("conversation_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("answered_at", sa.Float, nullable=True),
        sa.Column("link_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("slot_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("return_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("browser_hash", sa.String(64), nullable=True),
        sa.Column("attempt_expires", sa.Float, nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("form_questions")
