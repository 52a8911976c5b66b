"""Scale: vouchers pages keep 15 % free, so a voucher's state changes are HOT updates.

Why: a redemption (or freeze, reservation, …) rewrites one voucher row. On a full page
PostgreSQL must put the new row version elsewhere and add it to every index of the
table, the UNIQUE lookup hash among them: at a hundred million vouchers that is a random
write into an index of several gigabytes for every redemption. With room on the page the
update is heap-only (HOT): no index is touched, and the page prunes its old versions
itself. Generation (COPY) and imports fill new pages to 85 %.

Live: ``ALTER TABLE … SET (fillfactor)`` takes a SHARE UPDATE EXCLUSIVE lock for an
instant (redemptions and generation go on) and rewrites nothing: pages written from now
on follow it, the existing ones stay as they are. SQLite has no fill factor.

Revision ID: 0006_scale
Revises: 0006_promo
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_scale"
down_revision: str | None = "0006_promo"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 85


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE vouchers SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE vouchers RESET (fillfactor)")
