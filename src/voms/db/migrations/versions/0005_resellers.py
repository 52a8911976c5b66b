"""Resellers, their stock and electronic PIN sales.

Why: vouchers reach subscribers through distributors and shops (issue 21). A reseller
has an account with the operator (credit limit, commission, what it owes) and sits in a
tree of sub-resellers; a distributor API key may be limited to one reseller's subtree
(api_keys.reseller_id). Stock is recorded as serial ranges with a cursor, so handing a
ten-million-voucher range over is one row and a sale of N vouchers touches N vouchers.
Vouchers sold from a batch that is not active yet move to an active part of the batch
(batches.parent_batch_id, 0005_policy), so a sale activates exactly what it sold. sale_vouchers keys each
sold voucher once: no PIN is ever sold twice. reseller_entries is each reseller's
account, from which statements are drawn.

Revision ID: 0005_resellers
Revises: 0005_policy
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_resellers"
down_revision: str | None = "0005_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resellers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=400), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credit_limit", sa.BigInteger(), nullable=False),
        sa.Column("commission_bp", sa.Integer(), nullable=False),
        sa.Column("due", sa.BigInteger(), nullable=False),
        sa.Column("contact", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "commission_bp BETWEEN 0 AND 10000", name=op.f("ck_resellers_commission_range")
        ),
        sa.CheckConstraint(
            "credit_limit >= 0", name=op.f("ck_resellers_credit_limit_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["resellers.id"], name=op.f("fk_resellers_parent_id_resellers")
        ),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_resellers_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resellers")),
        sa.UniqueConstraint("code", name=op.f("uq_resellers_code")),
    )
    op.create_index("ix_resellers_parent", "resellers", ["parent_id"], unique=False)
    op.create_table(
        "reseller_stock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reseller_id", sa.Integer(), nullable=False),
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("serial_from", sa.BigInteger(), nullable=False),
        sa.Column("serial_to", sa.BigInteger(), nullable=False),
        sa.Column("next_serial", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('electronic', 'printed')", name=op.f("ck_reseller_stock_kind")
        ),
        sa.CheckConstraint(
            "next_serial BETWEEN serial_from AND serial_to + 1",
            name=op.f("ck_reseller_stock_next_serial_in_range"),
        ),
        sa.CheckConstraint("serial_from <= serial_to", name=op.f("ck_reseller_stock_serial_range")),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_reseller_stock_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["reseller_id"],
            ["resellers.id"],
            name=op.f("fk_reseller_stock_reseller_id_resellers"),
        ),
        sa.ForeignKeyConstraint(
            ["voucher_type_id"],
            ["voucher_types.id"],
            name=op.f("fk_reseller_stock_voucher_type_id_voucher_types"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reseller_stock")),
    )
    op.create_index(
        "ix_reseller_stock_holder", "reseller_stock", ["reseller_id", "voucher_type_id"]
    )
    op.create_index("ix_reseller_stock_serials", "reseller_stock", ["serial_from", "serial_to"])
    op.create_table(
        "sales",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("reseller_id", sa.Integer(), nullable=False),
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("commission", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("serial_from", sa.BigInteger(), nullable=True),
        sa.Column("serial_to", sa.BigInteger(), nullable=True),
        sa.Column("deliver_to_msisdn", sa.String(length=15), nullable=True),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.CheckConstraint("kind IN ('epin', 'activation')", name=op.f("ck_sales_kind")),
        sa.CheckConstraint("count >= 0", name=op.f("ck_sales_count_not_negative")),
        sa.ForeignKeyConstraint(
            ["reseller_id"], ["resellers.id"], name=op.f("fk_sales_reseller_id_resellers")
        ),
        sa.ForeignKeyConstraint(
            ["voucher_type_id"],
            ["voucher_types.id"],
            name=op.f("fk_sales_voucher_type_id_voucher_types"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sales")),
    )
    op.create_index("ix_sales_reseller_at", "sales", ["reseller_id", "at", "id"])
    op.create_table(
        "sale_vouchers",
        sa.Column("serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sale_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_sale_vouchers")),
    )
    op.create_index("ix_sale_vouchers_sale", "sale_vouchers", ["sale_id"])
    op.create_table(
        "reseller_entries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reseller_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("due_after", sa.BigInteger(), nullable=False),
        sa.Column("sale_id", sa.String(length=36), nullable=True),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.CheckConstraint(
            "kind IN ('sale', 'commission', 'payment')", name=op.f("ck_reseller_entries_kind")
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_reseller_entries_amount_not_negative")),
        sa.ForeignKeyConstraint(
            ["reseller_id"],
            ["resellers.id"],
            name=op.f("fk_reseller_entries_reseller_id_resellers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reseller_entries")),
    )
    op.create_index(
        "ix_reseller_entries_reseller_at", "reseller_entries", ["reseller_id", "at", "id"]
    )
    op.add_column("api_keys", sa.Column("reseller_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "reseller_id")
    op.drop_index("ix_reseller_entries_reseller_at", table_name="reseller_entries")
    op.drop_table("reseller_entries")
    op.drop_index("ix_sale_vouchers_sale", table_name="sale_vouchers")
    op.drop_table("sale_vouchers")
    op.drop_index("ix_sales_reseller_at", table_name="sales")
    op.drop_table("sales")
    op.drop_index("ix_reseller_stock_serials", table_name="reseller_stock")
    op.drop_index("ix_reseller_stock_holder", table_name="reseller_stock")
    op.drop_table("reseller_stock")
    op.drop_index("ix_resellers_parent", table_name="resellers")
    op.drop_table("resellers")
