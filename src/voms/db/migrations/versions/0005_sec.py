"""Security hardening: rights given to an API key by name, and the guessing budget.

Why: crediting a wallet without a voucher (voucher-type recharges) is a right of admin
keys and of keys given it explicitly (`voms apikey create --allow voucher-type-recharge`),
so the key row says which rights it was given. Failed voucher lookups are counted per
API key, service provider and client address and minute in a table every process
shares, so a PIN-guessing client is throttled however many workers and hosts it spreads
its guesses over.

Revision ID: 0005_sec
Revises: 0005_left
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_sec"
down_revision: str | None = "0005_left"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("allow", sa.String(length=200), nullable=True))
    op.create_table(
        "lookup_failures",
        sa.Column("subject", sa.String(length=120), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "minute", name=op.f("pk_lookup_failures")),
    )


def downgrade() -> None:
    op.drop_table("lookup_failures")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("allow")
