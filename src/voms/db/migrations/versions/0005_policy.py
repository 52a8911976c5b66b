"""Redemption policy for care: manual blacklists, reversals, batch parts.

Why: care blocks and releases MSISDNs by hand (the bad-PIN table gains who blocked, why
and until when); a redemption can be reversed (ledger cause ``reversal``, a table that
links each reversal to the transaction it reverses, and ``reversed_by`` on that
transaction and its ledger rows so a voucher made active again can be redeemed once
more: the one-success-per-voucher backstops now count unreversed rows only); a serial
range activated or given another expiry becomes a part of its batch (``parent_batch_id``).

Revision ID: 0005_policy
Revises: 0005_sec
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_policy"
down_revision: str | None = "0005_sec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_CAUSES = "cause IN ('redemption', 'recharge', 'reward', 'adjustment', 'expiry')"
NEW_CAUSES = "cause IN ('redemption', 'recharge', 'reward', 'adjustment', 'expiry', 'reversal')"
OLD_ONE_SUCCESS = "result_code = 0 AND kind IN ('redemption', 'commit')"
NEW_ONE_SUCCESS = OLD_ONE_SUCCESS + " AND reversed_by IS NULL"
OLD_LEDGER_REDEMPTION = "cause = 'redemption'"
NEW_LEDGER_REDEMPTION = OLD_LEDGER_REDEMPTION + " AND reversed_by IS NULL"


def upgrade() -> None:
    op.add_column("pin_attempts", sa.Column("manual_until", sa.DateTime(timezone=True)))
    op.add_column("pin_attempts", sa.Column("note", sa.String(length=200)))
    op.add_column("pin_attempts", sa.Column("blocked_by", sa.String(length=100)))
    op.add_column("batches", sa.Column("parent_batch_id", sa.Integer()))
    op.create_index("ix_batches_parent_batch_id", "batches", ["parent_batch_id"])
    op.add_column("transactions", sa.Column("reversed_by", sa.String(length=36)))
    op.add_column("ledger", sa.Column("reversed_by", sa.String(length=36)))
    _partial_unique(
        "uq_transactions_one_success_per_voucher", "transactions", ["serial"], NEW_ONE_SUCCESS
    )
    _partial_unique(
        "uq_ledger_redemption", "ledger", ["serial", "balance_type_id"], NEW_LEDGER_REDEMPTION
    )
    _ledger_causes(OLD_CAUSES, NEW_CAUSES)
    op.create_table(
        "reversals",
        sa.Column("transaction_id", sa.String(length=36), nullable=False),
        sa.Column("reversal_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("voucher_reactivated", sa.Boolean(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f("pk_reversals")),
        sa.UniqueConstraint("reversal_id", name=op.f("uq_reversals_reversal_id")),
    )


def _partial_unique(name: str, table: str, columns: list[str], where: str) -> None:
    op.drop_index(name, table_name=table)
    op.create_index(
        name,
        table,
        columns,
        unique=True,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def _ledger_causes(old: str, new: str) -> None:
    name = "ck_ledger_cause"
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(name), "ledger", type_="check")
        op.create_check_constraint(op.f(name), "ledger", new)
        return
    # As in 0002: SQLite cannot alter a constraint, and rebuilding the ledger would copy
    # every row; SQLite documents this edit of the stored definition for CHECK changes
    # ("ALTER TABLE", section 7). Every existing row satisfies the new condition (and,
    # going down, none may hold the cause 'reversal').
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    changed = bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
        "WHERE type = 'table' AND name = 'ledger' AND instr(sql, ?) > 0",
        (f"CONSTRAINT {name} CHECK ({old})", f"CONSTRAINT {name} CHECK ({new})", old),
    ).rowcount
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if changed != 1:
        raise RuntimeError(f"ledger.{name} is not CHECK ({old}) as expected")


def downgrade() -> None:
    reversed_rows = (
        op.get_bind()
        .exec_driver_sql("SELECT count(*) FROM ledger WHERE cause = 'reversal'")
        .scalar_one()
    )
    if reversed_rows:
        # Deleting them would leave balances that differ from their ledger.
        raise RuntimeError(f"{reversed_rows} ledger rows of reversals: cannot go below 0005")
    op.drop_table("reversals")
    _ledger_causes(NEW_CAUSES, OLD_CAUSES)
    _partial_unique(
        "uq_ledger_redemption", "ledger", ["serial", "balance_type_id"], OLD_LEDGER_REDEMPTION
    )
    _partial_unique(
        "uq_transactions_one_success_per_voucher", "transactions", ["serial"], OLD_ONE_SUCCESS
    )
    op.drop_column("ledger", "reversed_by")
    op.drop_column("transactions", "reversed_by")
    op.drop_index("ix_batches_parent_batch_id", table_name="batches")
    op.drop_column("batches", "parent_batch_id")
    op.drop_column("pin_attempts", "blocked_by")
    op.drop_column("pin_attempts", "note")
    op.drop_column("pin_attempts", "manual_until")
