"""The review queue ranked, filtered, paged and counted in the database (issue 26 point 1): whether
an image's label is a person's (``person_label``: 1 a person's, 0 not, NULL not known yet -- rows
from before this column; the queue reads those rows' metadata files once and fills it in), and
a covering index for the queue's filters, counts and orders.

Revision ID: i26_review_queue
Revises: i25_monitoring
"""

import sqlalchemy as sa
from alembic import op

revision = "i26_review_queue"
down_revision = "i25_monitoring"
branch_labels = None
depends_on = None

# Every column the queue selects, filters, counts and orders on (dataset/db.py REVIEW_INDEX_COLUMNS,
# spelled out here: a migration keeps the schema of its day).
INDEXES = {
    "ix_images_review": ["label", "confidence", "person_label", "source", "generator", "created_at", "id"],
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "person_label" not in {c["name"] for c in inspector.get_columns("images")}:
        op.add_column("images", sa.Column("person_label", sa.Integer(), nullable=True))
    have = {ix["name"] for ix in inspector.get_indexes("images")}
    for name, columns in INDEXES.items():
        if name not in have:
            op.create_index(name, "images", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("person_label")
