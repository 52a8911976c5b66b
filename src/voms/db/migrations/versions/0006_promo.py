"""Promotions: plans, a counter per plan and subscriber, rewards; scenario windows.

Why: loyalty plans count a subscriber's recharges over a window (a calendar month,
rolling days, a campaign) and reward a target reached, in the redemption's own
transaction (docs/promotions.md). A scenario may run only for a campaign's dates and
for some product types. Only new tables and two nullable columns on the small
``scenarios`` table: no rewrite of a large table.

Revision ID: 0006_promo
Revises: 0006_events
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_promo"
down_revision: str | None = "0006_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("scenarios", sa.Column("valid_from", _TIME, nullable=True))
    op.add_column("scenarios", sa.Column("valid_until", _TIME, nullable=True))
    op.create_table(
        "scenario_product_types",
        sa.Column("scenario_id", sa.Integer(), nullable=False),
        sa.Column("product_type_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scenario_id"],
            ["scenarios.id"],
            name=op.f("fk_scenario_product_types_scenario_id_scenarios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["product_type_id"],
            ["product_types.id"],
            name=op.f("fk_scenario_product_types_product_type_id_product_types"),
        ),
        sa.PrimaryKeyConstraint(
            "scenario_id", "product_type_id", name=op.f("pk_scenario_product_types")
        ),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("starts_at", _TIME, nullable=False),
        sa.Column("ends_at", _TIME, nullable=True),
        sa.Column("window_kind", sa.String(length=16), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=True),
        sa.Column("counter", sa.String(length=8), nullable=False),
        sa.Column("target", sa.BigInteger(), nullable=False),
        sa.Column("repeat", sa.Boolean(), nullable=False),
        sa.Column("eligible", sa.JSON(), nullable=False),
        sa.Column("reward", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "window_kind IN ('calendar_month', 'rolling_days', 'campaign')",
            name=op.f("ck_promotions_window_kind"),
        ),
        sa.CheckConstraint("counter IN ('count', 'value')", name=op.f("ck_promotions_counter")),
        sa.CheckConstraint("target > 0", name=op.f("ck_promotions_target_positive")),
        sa.CheckConstraint(
            "window_kind != 'rolling_days' OR window_days > 0",
            name=op.f("ck_promotions_rolling_days_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_promotions_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
        sa.UniqueConstraint("code", name=op.f("uq_promotions_code")),
    )
    op.create_table(
        "promotion_counters",
        sa.Column("promotion_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", _BIG_ID, nullable=False),
        sa.Column("window_start", _TIME, nullable=False),
        sa.Column("window_end", _TIME, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["promotion_id"],
            ["promotions.id"],
            name=op.f("fk_promotion_counters_promotion_id_promotions"),
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_promotion_counters_subscriber_id_subscribers"),
        ),
        sa.PrimaryKeyConstraint(
            "promotion_id", "subscriber_id", name=op.f("pk_promotion_counters")
        ),
    )
    op.create_index(
        "ix_promotion_counters_subscriber", "promotion_counters", ["subscriber_id"], unique=False
    )
    op.create_table(
        "promotion_rewards",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("promotion_id", sa.Integer(), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", _BIG_ID, nullable=False),
        sa.Column("msisdn", sa.String(length=15), nullable=False),
        sa.Column("transaction_id", sa.String(length=36), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.Column("credits", sa.JSON(), nullable=False),
        sa.Column("account_expiry_extension_days", sa.Integer(), nullable=False),
        sa.Column("new_product_type_id", sa.Integer(), nullable=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.CheckConstraint("times > 0", name=op.f("ck_promotion_rewards_times_positive")),
        sa.ForeignKeyConstraint(
            ["promotion_id"],
            ["promotions.id"],
            name=op.f("fk_promotion_rewards_promotion_id_promotions"),
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_promotion_rewards_subscriber_id_subscribers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_rewards")),
    )
    op.create_index("ix_promotion_rewards_at", "promotion_rewards", ["at"], unique=False)
    op.create_index(
        "ix_promotion_rewards_subscriber",
        "promotion_rewards",
        ["subscriber_id", "at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_promotion_rewards_subscriber", table_name="promotion_rewards")
    op.drop_index("ix_promotion_rewards_at", table_name="promotion_rewards")
    op.drop_table("promotion_rewards")
    op.drop_index("ix_promotion_counters_subscriber", table_name="promotion_counters")
    op.drop_table("promotion_counters")
    op.drop_table("promotions")
    op.drop_table("scenario_product_types")
    with op.batch_alter_table("scenarios") as batch:
        batch.drop_column("valid_until")
        batch.drop_column("valid_from")
