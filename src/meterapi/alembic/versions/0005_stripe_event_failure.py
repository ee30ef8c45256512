"""stripe events Stripe answered permanently about: when handling gave up"""

import sqlalchemy as sa
from alembic import op

import meterapi.models

revision: str = "0005_stripe_event_failure"
down_revision: str | None = "0004_process_heartbeat"


def upgrade() -> None:
    with op.batch_alter_table("stripe_event") as batch:
        batch.add_column(
            sa.Column("failed_at", meterapi.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("stripe_event") as batch:
        batch.drop_column("failed_at")
