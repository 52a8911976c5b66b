"""People scoped to a reseller: users.reseller_id.

Why: a distributor API key may be limited to one reseller's subtree (api_keys.reseller_id,
0005_resellers); a person signing in to the console for that reseller needs the same
scope (issue 21). One nullable column on a small table: no rewrite, no lock worth
mentioning on a live database.

Revision ID: 0006_leftovers
Revises: 0006_policy
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_leftovers"
down_revision: str | None = "0006_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("reseller_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "reseller_id")
