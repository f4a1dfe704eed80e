"""Jobs across hosts: which kind of process runs a job, and which one holds it.

``runner``: NULL (the service that accepted it runs it) or ``worker`` (queued for
``exposr-trainer worker`` on another host, WORKER_KINDS). ``holder``: host and pid of the process
running it, for people reading /jobs; liveness is the kind's lock, never this text.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    if "runner" not in present:
        op.add_column("jobs", sa.Column("runner", sa.String(16), nullable=True))
    if "holder" not in present:
        op.add_column("jobs", sa.Column("holder", sa.String(200), nullable=True))
