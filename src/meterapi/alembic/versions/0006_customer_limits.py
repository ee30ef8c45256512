"""per-customer limits: rate limit override and monthly spend cap"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import meterapi.models

revision: str = "0006"
down_revision: str | None = "0005_stripe_event_failure"


def upgrade() -> None:
    op.create_table(
        "customer_limit",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("rate_limit_set", sa.Boolean(), nullable=False),
        sa.Column("rate_limit", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("monthly_spend_cap", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_customer_limit_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_limit")),
    )


def downgrade() -> None:
    op.drop_table("customer_limit")
