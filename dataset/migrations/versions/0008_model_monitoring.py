"""Live monitoring of the served model: one row per (model, version, ISO week), written once the
week has ended and never recomputed (app/monitoring.py).

Revision ID: i25_monitoring
Revises: i23_webhooks
"""

import sqlalchemy as sa
from alembic import op

revision = "i25_monitoring"
down_revision = "i23_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "model_monitoring" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "model_monitoring",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("week", sa.String(10), primary_key=True),  # ISO week, 2026-W49
        sa.Column("row", sa.JSON(), nullable=False),  # {week, n, auc, auc_ci95, psi, ks_p, ...}
        sa.Column("degraded", sa.Text()),  # why this week means the model degraded, else NULL
        sa.Column("computed_at", sa.String(32), nullable=False),
    )
