"""subscription standing signals"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import meterapi.models

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    op.create_table(
        "subscription_signal",
        sa.Column("subscription_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("good", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint(
            "subscription_id", "at", "good", name=op.f("pk_subscription_signal")
        ),
    )


def downgrade() -> None:
    op.drop_table("subscription_signal")
