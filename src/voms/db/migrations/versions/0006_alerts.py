"""Alerts: thresholds and quiet hours per service provider, and one row per alert sent.

Why: subscribers are told by SMS of a low balance, an expiry coming and a reward;
operators by e-mail of low voucher stock, batches about to expire, a burst of
blacklistings and a failed job. Each occurrence is recorded once (a unique key), so an
alert is sent once across restarts and concurrent runs. New tables only: no existing
table is rewritten.

Revision ID: 0006_alerts
Revises: 0006_leftovers
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_alerts"
down_revision: str | None = "0006_leftovers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_settings",
        sa.Column("service_provider_id", sa.Integer(), nullable=False),
        sa.Column("quiet_from", sa.String(length=5), nullable=True),
        sa.Column("quiet_until", sa.String(length=5), nullable=True),
        sa.Column(
            "time_zone", sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False
        ),
        sa.Column("expiry_notice_days", sa.Integer(), nullable=True),
        sa.Column("batch_expiry_days", sa.Integer(), nullable=True),
        sa.Column("burst_count", sa.Integer(), nullable=True),
        sa.Column("burst_minutes", sa.Integer(), nullable=True),
        sa.Column("reward_sms", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("operator_emails", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_alert_settings_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("service_provider_id", name=op.f("pk_alert_settings")),
    )
    op.create_table(
        "low_balance_thresholds",
        sa.Column("balance_type_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "threshold > 0", name=op.f("ck_low_balance_thresholds_threshold_positive")
        ),
        sa.ForeignKeyConstraint(
            ["balance_type_id"],
            ["balance_types.id"],
            name=op.f("fk_low_balance_thresholds_balance_type_id_balance_types"),
        ),
        sa.PrimaryKeyConstraint("balance_type_id", name=op.f("pk_low_balance_thresholds")),
    )
    op.create_table(
        "stock_thresholds",
        sa.Column("voucher_type_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("threshold > 0", name=op.f("ck_stock_thresholds_threshold_positive")),
        sa.ForeignKeyConstraint(
            ["voucher_type_id"],
            ["voucher_types.id"],
            name=op.f("fk_stock_thresholds_voucher_type_id_voucher_types"),
        ),
        sa.PrimaryKeyConstraint("voucher_type_id", name=op.f("pk_stock_thresholds")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("occurrence_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("audience", sa.String(length=10), nullable=False),
        sa.Column("service_provider_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.BigInteger(), nullable=True),
        sa.Column("msisdn", sa.String(length=15), nullable=True),
        sa.Column("subject_id", sa.BigInteger(), nullable=True),
        sa.Column("subject_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("threshold", sa.BigInteger(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim", sa.String(length=32), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.CheckConstraint(
            "audience IN ('subscriber', 'operator')", name=op.f("ck_alerts_audience")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'failed', 'skipped', 'dropped')",
            name=op.f("ck_alerts_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("occurrence_key", name=op.f("uq_alerts_occurrence_key")),
    )
    op.create_index("ix_alerts_state", "alerts", ["state", "next_attempt_at"], unique=False)
    op.create_index("ix_alerts_kind_open", "alerts", ["kind", "resolved_at"], unique=False)
    op.create_index("ix_alerts_claim", "alerts", ["claim"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alerts_claim", table_name="alerts")
    op.drop_index("ix_alerts_kind_open", table_name="alerts")
    op.drop_index("ix_alerts_state", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("stock_thresholds")
    op.drop_table("low_balance_thresholds")
    op.drop_table("alert_settings")
