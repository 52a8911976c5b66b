"""Subscribers: the language they read and hear the channels in.

Why: USSD and SMS answer in the subscriber's own language when they chose one (SMS
``LANG sw``), else in their service provider's default. Nullable: no preference means
the provider's default, so existing rows need no value.

Revision ID: 0005_voice
Revises: 0005_reports
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_voice"
down_revision: str | None = "0005_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("language", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): a batch copy of subscribers would drop a
    # table that the ledger's foreign keys point at.
    op.drop_column("subscribers", "language")
