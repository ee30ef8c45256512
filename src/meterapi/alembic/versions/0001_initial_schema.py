"""initial schema"""

from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op

import meterapi.models

revision: str = "0001"
down_revision: str | None = None


def _where(condition: str) -> dict[str, Any]:
    """A partial index's condition, for PostgreSQL and SQLite alike."""
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "cache_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_revision")),
    )
    op.bulk_insert(
        sa.table(
            "cache_revision", sa.column("id", sa.Integer()), sa.column("revision", sa.BigInteger())
        ),
        [{"id": 1, "revision": 0}],
    )
    op.create_table(
        "customer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "stripe_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("subscription_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column(
            "subscription_item_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
        ),
        sa.Column(
            "subscription_status", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True
        ),
        sa.Column(
            "subscription_synced_at", meterapi.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("past_due_since", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "current_period_start", meterapi.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("current_period_end", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("created_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_customer_stripe_customer_id")),
        sa.UniqueConstraint("subscription_id", name=op.f("uq_customer_subscription_id")),
    )
    op.create_table(
        "stripe_event",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("stripe_created_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("received_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_event")),
    )
    with op.batch_alter_table("stripe_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_stripe_event_unprocessed",
            ["received_at"],
            unique=False,
            **_where("processed_at IS NULL"),
        )

    op.create_table(
        "api_key",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("last4", sqlmodel.sql.sqltypes.AutoString(length=4), nullable=False),
        sa.Column("created_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_api_key_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_key_digest")),
    )
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_key_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "checkout_session",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("claimed_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_checkout_session_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkout_session")),
    )
    with op.batch_alter_table("checkout_session", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_checkout_session_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "usage_report",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("identifier", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column(
            "stripe_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column("event_name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("event_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
        sa.Column("created_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", meterapi.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_usage_report_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_report")),
        sa.UniqueConstraint("identifier", name=op.f("uq_usage_report_identifier")),
    )
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_report_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index("ix_usage_report_due", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "usage_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("route", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("occurred_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("report_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_usage_event_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["usage_report.id"], name=op.f("fk_usage_event_report_id_usage_report")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_event")),
    )
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_event_customer_occurred", ["customer_id", "occurred_at"], unique=False
        )
        batch_op.create_index("ix_usage_event_report", ["report_id"], unique=False)
        batch_op.create_index(
            "ix_usage_event_unreported",
            ["customer_id", "id"],
            unique=False,
            **_where("report_id IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_event_unreported", **_where("report_id IS NULL"))
        batch_op.drop_index("ix_usage_event_report")
        batch_op.drop_index("ix_usage_event_customer_occurred")

    op.drop_table("usage_event")
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_report_due")
        batch_op.drop_index(batch_op.f("ix_usage_report_customer_id"))

    op.drop_table("usage_report")
    with op.batch_alter_table("checkout_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkout_session_customer_id"))

    op.drop_table("checkout_session")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_key_customer_id"))

    op.drop_table("api_key")
    with op.batch_alter_table("stripe_event", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_event_unprocessed", **_where("processed_at IS NULL"))

    op.drop_table("stripe_event")
    op.drop_table("customer")
    op.drop_table("cache_revision")
