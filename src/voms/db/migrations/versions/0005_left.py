"""Exports run in steps: a state and progress on each export, and the marks a reissue
replaced until it is complete.

Why: an export of ten million vouchers was one transaction, which on SQLite held the
write lock for its whole run. It now claims its vouchers a chunk per transaction (in the
background when asked over the API), so an export has a state (exporting, exported,
failed), the number of vouchers claimed so far, the time of its last step (an export
that stops stepping was orphaned by a dead process) and, when it failed, why. A reissue
that fails must give the vouchers their earlier export back: the marks it replaced wait
in export_displaced_marks until it is complete. Exports made before are complete.

Revision ID: 0005_left
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_left"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.add_column(
            sa.Column("state", sa.String(length=10), nullable=False, server_default="exported")
        )
        batch.add_column(
            sa.Column("exported_count", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    op.execute("UPDATE exports SET exported_count = voucher_count, updated_at = created_at")
    with op.batch_alter_table("exports") as batch:
        batch.alter_column("state", server_default=None)
        batch.alter_column("exported_count", server_default=None)
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_check_constraint(
            op.f("ck_exports_state"), "state IN ('exporting', 'exported', 'failed')"
        )
    op.create_table(
        "export_displaced_marks",
        sa.Column(
            "serial",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("previous_export_id", sa.Integer(), nullable=False),
        sa.Column("previous_partner_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_export_displaced_marks")),
    )


def downgrade() -> None:
    op.drop_table("export_displaced_marks")
    with op.batch_alter_table("exports") as batch:
        batch.drop_constraint(op.f("ck_exports_state"), type_="check")
        batch.drop_column("error")
        batch.drop_column("updated_at")
        batch.drop_column("exported_count")
        batch.drop_column("state")
