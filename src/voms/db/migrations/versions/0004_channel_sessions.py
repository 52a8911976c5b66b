"""Channels: USSD session state kept in the database.

Why: a USSD session is several HTTP callbacks from the gateway, and behind a load
balancer each may reach another `voms serve` process, so where the session stands in
its menu (step, retries left, the number to recharge, which input held the PIN) is kept
in a row every process can read, with an expiry after which it is forgotten. The row
never holds a PIN: the gateway sends all inputs again with each callback.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_sessions",
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("session_id", sa.String(length=100), nullable=False),
        sa.Column("msisdn", sa.String(length=15), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "session_id", name=op.f("pk_channel_sessions")),
    )
    op.create_index(
        "ix_channel_sessions_expires_at", "channel_sessions", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_channel_sessions_expires_at", table_name="channel_sessions")
    op.drop_table("channel_sessions")
