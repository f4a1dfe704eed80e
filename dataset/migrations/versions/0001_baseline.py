"""Baseline: the dedupe index (images) and the job history (jobs) as the first release left them.

A database made before migrations existed (tables created directly, maybe without the columns added
later) is brought to this revision in place: missing tables are created, missing nullable columns
added; nothing is dropped or rewritten.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Nullable columns later releases of the first schema added; an older images table gets them here.
IMAGE_ADDED_COLUMNS = {
    "scorer": sa.Text(),
    "generator": sa.String(64),
    "group_hint": sa.String(100),
    "split_group": sa.String(36),
    "split": sa.String(8),
    "size_bytes": sa.BigInteger(),
    "has_exif": sa.Integer(),
}


def image_columns() -> list[sa.Column]:
    return [
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("phash", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("scorer", sa.Text(), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("image_key", sa.String(200), nullable=False),
        sa.Column("meta_key", sa.String(200), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("generator", sa.String(64), nullable=True),
        sa.Column("group_hint", sa.String(100), nullable=True),
        sa.Column("split_group", sa.String(36), nullable=True),
        sa.Column("split", sa.String(8), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("has_exif", sa.Integer(), nullable=True),
    ]


def job_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("progress", sa.JSON()),
        sa.Column("result", sa.JSON()),
        sa.Column("error", sa.Text()),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "images" not in tables:
        # AUTOINCREMENT: SQLite would otherwise reuse the largest seq once its row is deleted.
        op.create_table("images", *image_columns(), sqlite_autoincrement=True)
        op.create_index("ix_images_label_source", "images", ["label", "source"])
    else:
        present = {c["name"] for c in inspector.get_columns("images")}
        for name, type_ in IMAGE_ADDED_COLUMNS.items():
            if name not in present:
                op.add_column("images", sa.Column(name, type_, nullable=True))
    if "jobs" not in tables:
        op.create_table("jobs", *job_columns())
        for column in ("kind", "state", "created_at"):
            op.create_index(f"ix_jobs_{column}", "jobs", [column])
