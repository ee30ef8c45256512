"""the outbox of outbound webhooks"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import meterapi.models

revision: str = "0007"
down_revision: str | None = "0006"

_PENDING = "status = 'pending'"


def upgrade() -> None:
    at = meterapi.models.UTCDateTime(timezone=True)
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "outbound_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", text(length=40), nullable=False),
        sa.Column("type", text(length=100), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("payload", text(), nullable=False),
        sa.Column("status", text(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", at, nullable=False),
        sa.Column("give_up_at", at, nullable=False),
        sa.Column("claimed_until", at, nullable=True),
        sa.Column("claimed_by", text(length=40), nullable=True),
        sa.Column("last_error", text(length=1000), nullable=True),
        sa.Column("created_at", at, nullable=False),
        sa.Column("delivered_at", at, nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_outbound_event_customer_id_customer")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_event")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbound_event_event_id")),
    )
    with op.batch_alter_table("outbound_event", schema=None) as batch_op:
        batch_op.create_index("ix_outbound_event_due", ["status", "next_attempt_at"])
        batch_op.create_index(batch_op.f("ix_outbound_event_created_at"), ["created_at"])
        batch_op.create_index(
            "ix_outbound_event_pending_customer",
            ["customer_id", "id"],
            postgresql_where=sa.text(_PENDING),
            sqlite_where=sa.text(_PENDING),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbound_event", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbound_event_pending_customer",
            postgresql_where=sa.text(_PENDING),
            sqlite_where=sa.text(_PENDING),
        )
        batch_op.drop_index(batch_op.f("ix_outbound_event_created_at"))
        batch_op.drop_index("ix_outbound_event_due")
    op.drop_table("outbound_event")
