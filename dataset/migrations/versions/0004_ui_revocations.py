"""Console session ids that must not be accepted again: sessions logged out, login forms used.

Kept in the database so that a restart, or another replica, honours a logout; each row lives
until the session or form would have expired anyway (``until``, epoch seconds).

Revision ID: i21_ui_revocations
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "i21_ui_revocations"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "ui_revocations" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "ui_revocations",
            sa.Column("sid", sa.String(64), primary_key=True),
            sa.Column("until", sa.BigInteger(), nullable=False),
        )
