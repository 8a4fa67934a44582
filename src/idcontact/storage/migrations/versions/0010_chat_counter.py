"""A conversation counts its chat messages itself: the next number is taken in the same
statement that marks the conversation active, not read back from the messages (a query less
per message, and no retry when two instances take a number at once).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("chat_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    # Conversations with messages already go on from their last number.
    op.execute(
        "UPDATE conversations SET chat_seq = (SELECT COALESCE(MAX(seq), 0) FROM chat_messages"
        " WHERE chat_messages.conversation_id = conversations.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("chat_seq")
