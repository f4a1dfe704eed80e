"""Source rate limits shared by every replica: one token bucket row per source.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "rate_buckets" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "rate_buckets",
            sa.Column("source", sa.String(64), primary_key=True),
            sa.Column("tokens", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),  # the database server's clock, epoch s
        )
