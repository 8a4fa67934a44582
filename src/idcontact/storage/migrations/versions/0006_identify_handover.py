"""The conversation in the contact centre's workflow: identification asked during it (chat,
or a call with a code), a transcript waiting to be handed over, a caller acting for someone
else, a warm transfer on offer, a callback request.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


COLUMNS = (
    sa.Column("identify_purpose", sa.String(64), nullable=True),
    sa.Column("identify_state", sa.String(16), nullable=True),
    sa.Column("identify_at", sa.Float, nullable=True),
    sa.Column("identify_code_hash", sa.String(64), nullable=True),
    sa.Column("identify_code_expires", sa.Float, nullable=True),
    sa.Column("hand_over_until", sa.Float, nullable=True),
    sa.Column("acting_for", sa.Integer, nullable=True),
    sa.Column("transfer_to", sa.String(32), nullable=True),
    sa.Column("transfer_expires", sa.Float, nullable=True),
    sa.Column("callback_at", sa.Float, nullable=True),
    sa.Column("has_session", sa.Integer, nullable=True),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("conversations", column)
    op.create_index(
        "ix_conversations_identify_code_hash", "conversations", ["identify_code_hash"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_identify_code_hash", "conversations")
    with op.batch_alter_table("conversations") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
