"""Redemption policy: default scenarios, recharge limits, the expiry-driven account lifecycle.

Why: operators migrating from the charging platforms expect a voucher type to choose its
default scenario on its own (``voucher_types.scenario_selection``), recharge limits per
service provider (``service_providers.recharge_limits``, counted per recipient MSISDN
and UTC day or month in ``recharge_counters``, one upsert per redemption), and an
account that expires and is deactivated after a grace period (the state ``expired``).

On a live database: two small catalog tables gain a column; ``subscribers`` gets a new
CHECK constraint, on PostgreSQL added NOT VALID and validated in a second statement, so
the table is only read (no rewrite) and writes are not blocked while it is checked.

Revision ID: 0006_policy
Revises: 0005_console
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_policy"
down_revision: str | None = "0005_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = "state IN ('active', 'frozen', 'suspended', 'deactivated')"
NEW_STATES = "state IN ('active', 'expired', 'frozen', 'suspended', 'deactivated')"


def upgrade() -> None:
    op.add_column(
        "voucher_types",
        sa.Column(
            "scenario_selection", sa.String(length=8), nullable=False, server_default="prompt"
        ),
    )
    op.add_column("service_providers", sa.Column("recharge_limits", sa.JSON()))
    op.create_table(
        "recharge_counters",
        sa.Column("msisdn", sa.String(length=15), nullable=False),
        sa.Column("period", sa.String(length=9), nullable=False),
        sa.Column("balance_type_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "msisdn", "period", "balance_type_id", name=op.f("pk_recharge_counters")
        ),
    )
    op.create_index("ix_recharge_counters_period", "recharge_counters", ["period"])
    _subscriber_states(OLD_STATES, NEW_STATES)


def _subscriber_states(old: str, new: str) -> None:
    name = "ck_subscribers_state"
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f(name), "subscribers", type_="check")
        bind.exec_driver_sql(
            f"ALTER TABLE subscribers ADD CONSTRAINT {name} CHECK ({new}) NOT VALID"
        )
        bind.exec_driver_sql(f"ALTER TABLE subscribers VALIDATE CONSTRAINT {name}")
        return
    # As in 0002 and 0005_policy: SQLite cannot alter a constraint, and rebuilding the
    # table would copy every subscriber; SQLite documents this edit of the stored
    # definition for CHECK changes ("ALTER TABLE", section 7). Every existing row
    # satisfies the new condition (and, going down, none may be 'expired').
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    changed = bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
        "WHERE type = 'table' AND name = 'subscribers' AND instr(sql, ?) > 0",
        (f"CONSTRAINT {name} CHECK ({old})", f"CONSTRAINT {name} CHECK ({new})", old),
    ).rowcount
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if changed != 1:
        raise RuntimeError(f"subscribers.{name} is not CHECK ({old}) as expected")


def downgrade() -> None:
    expired = (
        op.get_bind()
        .exec_driver_sql("SELECT count(*) FROM subscribers WHERE state = 'expired'")
        .scalar_one()
    )
    if expired:
        raise RuntimeError(f"{expired} expired subscribers: run account_lifecycle or reactivate")
    _subscriber_states(NEW_STATES, OLD_STATES)
    op.drop_index("ix_recharge_counters_period", table_name="recharge_counters")
    op.drop_table("recharge_counters")
    op.drop_column("service_providers", "recharge_limits")
    op.drop_column("voucher_types", "scenario_selection")
