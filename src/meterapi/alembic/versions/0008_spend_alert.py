"""spend-cap threshold alerts that fired, one row per customer, period and threshold"""

import sqlalchemy as sa
from alembic import op

import meterapi.models

revision: str = "0008"
down_revision: str | None = "0007"


def upgrade() -> None:
    at = meterapi.models.UTCDateTime(timezone=True)
    op.create_table(
        "spend_alert",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("period_start", at, nullable=False),
        sa.Column("threshold_percent", sa.Integer(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("cap", sa.BigInteger(), nullable=False),
        sa.Column("fired_at", at, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_spend_alert_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint(
            "customer_id", "period_start", "threshold_percent", name=op.f("pk_spend_alert")
        ),
    )


def downgrade() -> None:
    op.drop_table("spend_alert")
