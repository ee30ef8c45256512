"""stripe events Stripe answered permanently about: when handling gave up

Revision ID: 0005_stripe_event_failure
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import meterapi.models

revision: str = "0005_stripe_event_failure"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stripe_event") as batch:
        batch.add_column(
            sa.Column("failed_at", meterapi.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("stripe_event") as batch:
        batch.drop_column("failed_at")
