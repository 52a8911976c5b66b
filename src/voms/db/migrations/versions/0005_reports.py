"""Reports: hourly and daily rollups of transactions, all-time totals, and voucher-state counts per batch.

Why: reports over a year of 100 million transactions must answer in under a second, so
they read small tables kept up to date by the report_rollups job (transactions folded in
incrementally behind a watermark) instead of scanning ``transactions`` or ``vouchers``.
``voucher_state_moves`` holds, per batch and voucher state, the net number of vouchers
moved into that state since they were written; it is filled here once from the vouchers
present (a one-off scan, run while the service is stopped), and from then on kept by the
code that moves vouchers. The job's cursor records that transactions before this upgrade
are already in those counts; it still folds them into the rollups.

Revision ID: 0005_reports
Revises: 0005_resellers
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005_reports"
down_revision: str | None = "0005_resellers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rollup(name: str, bucket: str) -> None:
    op.create_table(
        name,
        sa.Column(bucket, sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("result_code", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            bucket,
            "service_provider_id",
            "voucher_type_id",
            "channel",
            "kind",
            "result_code",
            "partner_id",
            "currency",
            name=op.f(f"pk_{name}"),
        ),
    )


def upgrade() -> None:
    _rollup("report_hourly", "hour")
    _rollup("report_daily", "day")
    op.create_table(
        "report_totals",
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("result_code", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "service_provider_id", "channel", "kind", "result_code", name=op.f("pk_report_totals")
        ),
    )
    op.create_table(
        "voucher_state_moves",
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "state", name=op.f("pk_voucher_state_moves")),
    )
    op.execute(
        """
        INSERT INTO voucher_state_moves (batch_id, state, net)
        SELECT batch_id, state, SUM(n) FROM (
            SELECT batch_id, state, COUNT(*) AS n FROM vouchers GROUP BY batch_id, state
            UNION ALL
            SELECT batch_id, voucher_state, COUNT(*) FROM voucher_archive
            GROUP BY batch_id, voucher_state
            UNION ALL
            SELECT id, 'available', -generated_count FROM batches
        ) AS counted
        GROUP BY batch_id, state
        HAVING SUM(n) <> 0
        """
    )
    if op.get_bind().execute(sa.text("SELECT 1 FROM batches LIMIT 1")).first() is None:
        return  # nothing counted yet: the job counts every transaction
    now = datetime.now(UTC)
    cursors = sa.table(
        "job_cursors",
        sa.column("job", sa.String),
        sa.column("position", sa.BigInteger),
        sa.column("detail", sa.JSON),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        cursors,
        [
            {
                "job": "report_rollups",
                "position": 0,
                "detail": {"counts_from": now.isoformat()},
                "updated_at": now
                if op.get_bind().dialect.name != "sqlite"
                else now.replace(tzinfo=None),
            }
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM job_cursors WHERE job = 'report_rollups'")
    op.drop_table("voucher_state_moves")
    op.drop_table("report_totals")
    op.drop_table("report_daily")
    op.drop_table("report_hourly")
