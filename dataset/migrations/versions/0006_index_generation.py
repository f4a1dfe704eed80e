"""A generation id for the index database: which database a near-duplicate file was written for.

The near-duplicate structure is kept in a file beside the index (dataset/nearindex.py) with the
seq up to which it holds rows. A database made anew -- ``check --rebuild-index`` moving a damaged
SQLite file aside, DATABASE_URL pointed elsewhere -- numbers its rows afresh, so the file must not
be trusted there: each database gets a random generation when this revision runs on it, the file
records it, and a file of another generation is rebuilt.

Revision ID: i27_index_generation
Revises: i21_index_rebuild
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "i27_index_generation"
down_revision = "i21_index_rebuild"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "index_state" not in sa.inspect(bind).get_table_names():
        op.create_table(
            "index_state",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(200), nullable=False),
        )
    state = sa.table("index_state", sa.column("name", sa.String), sa.column("value", sa.String))
    if bind.execute(sa.select(state.c.value).where(state.c.name == "generation")).first() is None:
        op.execute(state.insert().values(name="generation", value=str(uuid.uuid4())))
