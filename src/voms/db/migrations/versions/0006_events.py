"""Events: the outbox, the destinations events go to, and each destination's deliveries.

Why: downstream systems (CRM, data warehouse, fraud) hear about every redemption, batch
change and blacklisting as it happens. An event is written to ``event_outbox`` in the
transaction that causes it (so none is lost and none is sent for a rolled-back change);
the relay fans it out into ``event_deliveries``, one per destination, and delivers them
in order, at least once, as CloudEvents. New tables only: nothing existing is rewritten.

Revision ID: 0006_events
Revises: 0006_charging
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_events"
down_revision: str | None = "0006_charging"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("seq", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=True),
        sa.Column("service_provider_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dispatched", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_outbox")),
        sa.UniqueConstraint("id", name=op.f("uq_event_outbox_id")),
    )
    op.create_index("ix_event_outbox_pending", "event_outbox", ["dispatched", "seq"])
    op.create_index("ix_event_outbox_at", "event_outbox", ["at"])
    op.create_table(
        "event_destinations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("secret_key_id", sa.SmallInteger(), nullable=True),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("service_provider_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('webhook', 'nats', 'amqp')", name=op.f("ck_event_destinations_kind")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'disabled')", name=op.f("ck_event_destinations_state")
        ),
        sa.ForeignKeyConstraint(
            ["service_provider_id"],
            ["service_providers.id"],
            name=op.f("fk_event_destinations_service_provider_id_service_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_destinations")),
    )
    op.create_table(
        "event_deliveries",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("destination_id", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'dead')", name=op.f("ck_event_deliveries_state")
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["event_destinations.id"],
            name=op.f("fk_event_deliveries_destination_id_event_destinations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_deliveries")),
        sa.UniqueConstraint("destination_id", "event_seq", name="uq_event_deliveries_event"),
    )
    op.create_index(
        "ix_event_deliveries_queue", "event_deliveries", ["destination_id", "state", "event_seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_event_deliveries_queue", table_name="event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_table("event_destinations")
    op.drop_index("ix_event_outbox_at", table_name="event_outbox")
    op.drop_index("ix_event_outbox_pending", table_name="event_outbox")
    op.drop_table("event_outbox")
