"""Housekeeping: job history, job leases, resumable cursors, voucher archive, expiry counts.

Why: scheduled jobs must run once per slot across many `voms serve` processes (a lease
row with an expiry, portable to distributed PostgreSQL where advisory locks are not
enough), leave a history an operator can read, and resume where they stopped. Vouchers
past retention move to an archive that keeps the PIN's lookup hash (UNIQUE), so an
archived PIN is never issued again and care still finds the voucher.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _at(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("runner", sa.String(length=100), nullable=False),
        _at("started_at"),
        _at("finished_at", nullable=True),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("rows_affected", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('running', 'succeeded', 'failed', 'abandoned')",
            name=op.f("ck_job_runs_outcome"),
        ),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'cli', 'api')", name=op.f("ck_job_runs_trigger")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    op.create_index("ix_job_runs_job_started", "job_runs", ["job", "started_at"], unique=False)
    op.create_index("ix_job_runs_started", "job_runs", ["started_at"], unique=False)
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        _at("expires_at", nullable=True),
        _at("last_slot", nullable=True),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_leases")),
    )
    op.create_table(
        "job_cursors",
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_cursors")),
    )
    op.create_table(
        "voucher_archive",
        sa.Column("serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("pin_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("lookup_key_id", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("voucher_state", sa.String(length=10), nullable=False),
        _at("state_changed_at", nullable=True),
        _at("redeemed_at", nullable=True),
        sa.Column("redeemed_by", sa.String(length=15), nullable=True),
        _at("expires_at"),
        _at("archived_at"),
        sa.CheckConstraint(
            "state IN ('redeemed', 'expired', 'deleted')", name=op.f("ck_voucher_archive_state")
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_voucher_archive")),
        sa.UniqueConstraint("pin_hash", name=op.f("uq_voucher_archive_pin_hash")),
    )
    op.create_index("ix_voucher_archive_batch_id", "voucher_archive", ["batch_id"], unique=False)
    op.create_table(
        "batch_expiries",
        sa.Column("batch_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        _at("expires_at"),
        sa.Column("expired_count", sa.BigInteger(), nullable=False),
        _at("counted_at"),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_batch_expiries")),
    )
    op.create_index(
        "ix_batch_expiries_voucher_type",
        "batch_expiries",
        ["voucher_type_id", "expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_batch_expiries_voucher_type", table_name="batch_expiries")
    op.drop_table("batch_expiries")
    op.drop_index("ix_voucher_archive_batch_id", table_name="voucher_archive")
    op.drop_table("voucher_archive")
    op.drop_table("job_cursors")
    op.drop_table("job_leases")
    op.drop_index("ix_job_runs_started", table_name="job_runs")
    op.drop_index("ix_job_runs_job_started", table_name="job_runs")
    op.drop_table("job_runs")
