"""The webhook outbox: one row per (event, subscriber) delivery, its attempts and its next try.

Revision ID: i23_webhooks
Revises: i27_index_generation
"""

import sqlalchemy as sa
from alembic import op

revision = "i23_webhooks"
down_revision = "i27_index_generation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "webhook_deliveries" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),  # the webhook-id header: the same on every retry
        sa.Column("event_id", sa.String(40), nullable=False, index=True),  # one event, several subscribers
        sa.Column("event", sa.String(64), nullable=False, index=True),
        sa.Column("subscriber", sa.String(2000), nullable=False),  # its name, else its URL (no secret)
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),  # the exact bytes signed and sent, every attempt
        sa.Column("state", sa.String(16), nullable=False, index=True),  # pending, delivered, failed
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_log", sa.JSON(), nullable=False),  # [{at, status, error, ms}]
        sa.Column("created_at", sa.String(32), nullable=False, index=True),
        sa.Column("next_at", sa.Float(), nullable=False, index=True),  # epoch seconds of the next try
        sa.Column("give_up_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.String(32)),
        sa.Column("claimed_until", sa.Float()),  # a sender's lease; a dead sender's expires
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
    )
