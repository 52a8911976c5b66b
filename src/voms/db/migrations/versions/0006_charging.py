"""External charging systems: a billing engine per service provider, and its charges.

Why: most operators keep balances in an IN/OCS, not in the voucher system. A service
provider's ``billing`` names its engine (null: the built-in wallet; secrets only as
references, never values), a balance type's ``external_id`` names the account at the
charging system ("main" or a dedicated account), and ``charges`` keeps each credit
asked of a charging system under its originTransactionID, so that an outcome left
unknown by a timeout is settled by retrying with the same id. Both new columns are
nullable: adding them rewrites no table on PostgreSQL.

Revision ID: 0006_charging
Revises: 0006_alerts
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_charging"
down_revision: str | None = "0006_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("service_providers") as batch:
        batch.add_column(sa.Column("billing", sa.JSON(), nullable=True))
    with op.batch_alter_table("balance_types") as batch:
        batch.add_column(sa.Column("external_id", sa.String(length=32), nullable=True))
    op.create_table(
        "charges",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("transaction_id", sa.String(length=36), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(length=8), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("msisdn", sa.String(length=15), nullable=False),
        sa.Column("recipient_msisdn", sa.String(length=15), nullable=False),
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        sa.Column("scenario", sa.SmallInteger(), nullable=False),
        sa.Column("refill", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("settled_transaction_id", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'unknown', 'credited', 'refused')",
            name=op.f("ck_charges_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charges")),
    )
    op.create_index("ix_charges_due", "charges", ["state", "next_try_at"])
    op.create_index("ix_charges_serial", "charges", ["serial"])
    op.create_index("ix_charges_recipient", "charges", ["recipient_msisdn", "state"])


def downgrade() -> None:
    op.drop_index("ix_charges_recipient", table_name="charges")
    op.drop_index("ix_charges_serial", table_name="charges")
    op.drop_index("ix_charges_due", table_name="charges")
    op.drop_table("charges")
    # Plain DROP COLUMN (SQLite 3.35+ too): a batch copy of service_providers would drop
    # a table that other tables' foreign keys name.
    op.drop_column("balance_types", "external_id")
    op.drop_column("service_providers", "billing")
