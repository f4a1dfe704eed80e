"""An index rebuild in progress is marked in the index itself, so a rebuild cut off (kill -9, a
crash) leaves an index that start-up refuses instead of serving a fraction of the dataset.

Revision ID: i21_index_rebuild
Revises: i21_ui_revocations
"""

import sqlalchemy as sa
from alembic import op

revision = "i21_index_rebuild"
down_revision = "i21_ui_revocations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "index_marks" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "index_marks",
            sa.Column("name", sa.String(32), primary_key=True),
            sa.Column("value", sa.Text(), nullable=False),
        )
