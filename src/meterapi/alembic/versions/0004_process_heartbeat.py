"""process heartbeats (revocation acknowledged by every process); api_key.rotated_at"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import meterapi.models

revision: str = "0004_process_heartbeat"
down_revision: str | None = "0003"


def upgrade() -> None:
    op.create_table(
        "process_heartbeat",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("hostname", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("started_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", meterapi.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_process_heartbeat")),
    )
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rotated_at", meterapi.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_column("rotated_at")
    op.drop_table("process_heartbeat")
