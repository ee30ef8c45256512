"""usage reports by customer and time, for the usage view"""

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_index(
        "ix_usage_report_customer_event_at", "usage_report", ["customer_id", "event_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_usage_report_customer_event_at", table_name="usage_report")
