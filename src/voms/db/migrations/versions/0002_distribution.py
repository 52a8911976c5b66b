"""Distribution: partners, exports and the encrypted export files.

Why: vouchers leave the system only as files encrypted to a partner's OpenPGP key
(issue 5). Each export is recorded (who, when, partner, filters, count, SHA-256 of the
encrypted file) so an operator can prove what was handed to whom; the encrypted file
itself is kept in the database, in chunks, until its download link expires, so that
any server behind the load balancer can serve the link (servers stay stateless).

Which export and partner each voucher went to lives in the narrow voucher_exports
table (serial → export, partner), and the vouchers table loses its unused partner_id
and export_id columns: setting them on a million vouchers wrote a new version of every
voucher row and new entries in all its indexes, the 32-byte UNIQUE lookup hash among
them (measured 10-18 s per million on PostgreSQL, and index bloat on the redemption
path), against about 2 s for the narrow table.

Also: a batch's serial range may now hold more serials than vouchers (count <= range).
Vouchers imported from a legacy system keep the serials printed on their cards, and a
legacy file of the vouchers still unused has gaps where vouchers were sold and used.
Generated batches still fill their range exactly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "partners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("contact", sa.String(length=200), nullable=True),
        sa.Column("service_provider_id", sa.Integer(), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_user_ids", sa.JSON(), nullable=False),
        sa.Column("key_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('active', 'disabled')", name=op.f("ck_partners_state")),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_partners_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
        sa.UniqueConstraint("name", name=op.f("uq_partners_name")),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=4), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("reissue", sa.Boolean(), nullable=False),
        sa.Column("voucher_count", sa.BigInteger(), nullable=False),
        sa.Column("reissued_count", sa.BigInteger(), nullable=False),
        sa.Column("serial_first", sa.BigInteger(), nullable=True),
        sa.Column("serial_last", sa.BigInteger(), nullable=True),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("download_token_hash", sa.String(length=64), nullable=True),
        sa.Column("download_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("format IN ('csv', 'xlsx')", name=op.f("ck_exports_format")),
        sa.CheckConstraint("voucher_count > 0", name=op.f("ck_exports_voucher_count_positive")),
        sa.CheckConstraint(
            "reissued_count BETWEEN 0 AND voucher_count",
            name=op.f("ck_exports_reissued_count_range"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_exports_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_exports_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    op.create_index("ix_exports_created_at", "exports", ["created_at"], unique=False)
    op.create_index("ix_exports_partner", "exports", ["partner_id"], unique=False)
    op.create_table(
        "export_file_chunks",
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["exports.id"],
            name=op.f("fk_export_file_chunks_export_id_exports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("export_id", "seq", name=op.f("pk_export_file_chunks")),
    )
    op.create_table(
        "voucher_exports",
        sa.Column(
            "serial",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_voucher_exports")),
    )
    # Nothing ever wrote them (exports arrive with this revision).
    op.drop_column("vouchers", "partner_id")
    op.drop_column("vouchers", "export_id")
    _serial_range(GAP_FREE, GAPS_ALLOWED)


GAP_FREE = "serial_last - serial_first + 1 = count"
GAPS_ALLOWED = "count <= serial_last - serial_first + 1"


def _serial_range(old: str, new: str) -> None:
    name = "ck_batches_serial_range"
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(name), "batches", type_="check")
        op.create_check_constraint(op.f(name), "batches", new)
        return
    # SQLite cannot alter a constraint, and rebuilding the batches table would break
    # its vouchers' foreign keys (PRAGMA foreign_keys cannot be turned off inside the
    # migration's transaction). SQLite documents this edit of the stored table
    # definition for changing CHECK constraints ("ALTER TABLE", section 7); every
    # existing row satisfies the new condition.
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    changed = bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
        "WHERE type = 'table' AND name = 'batches' AND instr(sql, ?) > 0",
        (f"CONSTRAINT {name} CHECK ({old})", f"CONSTRAINT {name} CHECK ({new})", old),
    ).rowcount
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if changed != 1:
        raise RuntimeError(f"batches.{name} is not CHECK ({old}) as expected")


def downgrade() -> None:
    _serial_range(GAPS_ALLOWED, GAP_FREE)
    op.add_column("vouchers", sa.Column("partner_id", sa.Integer(), nullable=True))
    op.add_column("vouchers", sa.Column("export_id", sa.Integer(), nullable=True))
    op.drop_table("voucher_exports")
    op.drop_table("export_file_chunks")
    op.drop_index("ix_exports_partner", table_name="exports")
    op.drop_index("ix_exports_created_at", table_name="exports")
    op.drop_table("exports")
    op.drop_table("partners")
