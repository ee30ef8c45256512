"""The tables. Singular snake_case names, UTC ``_at`` timestamps, money in integer cents.

The guarantees live in the schema: a key digest, a Stripe event id, a Checkout Session and a
meter-event identifier can each be stored once only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, Integer, text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from meterapi.db import is_postgres


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on both backends (SQLite stores no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware ones")
        value = value.astimezone(UTC)
        return value if is_postgres(dialect) else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints, so migrations can drop and alter them on SQLite (batch mode) and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, so the 64-bit id narrows there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _at(*, nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    return Field(
        default_factory=utcnow if default_now else None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    TRIALING = "trialing"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    CANCELED = "canceled"
    PAUSED = "paused"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"


class Customer(SQLModel, table=True):
    __tablename__ = "customer"

    id: int | None = Field(default=None, primary_key=True)
    stripe_customer_id: str = Field(max_length=255, unique=True)
    email: str | None = Field(default=None, max_length=320)
    subscription_id: str | None = Field(default=None, max_length=255, unique=True)
    subscription_item_id: str | None = Field(default=None, max_length=255)
    subscription_status: str | None = Field(default=None, max_length=32)
    # Stripe's `created` of the newest event (or fetch) applied; older news is ignored.
    subscription_synced_at: datetime | None = _at(nullable=True)
    past_due_since: datetime | None = _at(nullable=True)
    current_period_start: datetime | None = _at(nullable=True)
    current_period_end: datetime | None = _at(nullable=True)
    cancel_at_period_end: bool = False
    created_at: datetime = _at(default_now=True)
    updated_at: datetime = _at(default_now=True)


class CheckoutSession(SQLModel, table=True):
    """A completed Checkout Session, so that its first key is revealed once only."""

    __tablename__ = "checkout_session"

    id: str = Field(primary_key=True, max_length=255)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    claimed_at: datetime | None = _at(nullable=True)
    created_at: datetime = _at(default_now=True)


class SubscriptionSignal(SQLModel, table=True):
    """Evidence about a subscription's payment standing, at Stripe's time.

    Good: a snapshot in ``active``/``trialing`` or a paid invoice. Bad: a failed payment or a
    ``past_due`` snapshot. Kept as a set (not folded into one column) so that ``past_due_since``,
    the earliest bad signal since the latest good one, is the same whatever order Stripe's events
    arrive in.
    """

    __tablename__ = "subscription_signal"

    subscription_id: str = Field(primary_key=True, max_length=255)
    at: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True, nullable=False))
    good: bool = Field(primary_key=True)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    name: str = Field(default="default", max_length=100)
    # HMAC-SHA-256 of the whole key under the server's pepper, hex; the key itself is never stored.
    digest: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=32)
    last4: str = Field(max_length=4)
    created_at: datetime = _at(default_now=True)
    last_used_at: datetime | None = _at(nullable=True)
    expires_at: datetime | None = _at(nullable=True)
    revoked_at: datetime | None = _at(nullable=True)
    # Set when a successor was issued: until expires_at the key is in its rotation grace and may
    # call the paid API and read, nothing else (CONTRACT §3, key_rotated).
    rotated_at: datetime | None = _at(nullable=True)


class CacheRevision(SQLModel, table=True):
    """A counter bumped whenever a key or a customer's access changes.

    Processes that cannot be told directly (by PostgreSQL NOTIFY) poll it to drop stale
    cache entries.
    """

    __tablename__ = "cache_revision"

    id: int = Field(default=1, primary_key=True)
    revision: int = Field(default=0, sa_column=Column(BigInteger(), nullable=False))


class ProcessHeartbeat(SQLModel, table=True):
    """One row per running service process: the ``cache_revision`` its key cache has applied,
    and when it last said so. A revocation waits until every live process has applied it
    (``keys.invalidation``); a cleanly stopped process deletes its row."""

    __tablename__ = "process_heartbeat"

    id: str = Field(primary_key=True, max_length=40)
    hostname: str = Field(max_length=255)
    pid: int
    revision: int = Field(default=0, sa_column=Column(BigInteger(), nullable=False))
    started_at: datetime = _at(default_now=True)
    seen_at: datetime = _at(default_now=True)


class UsageEvent(SQLModel, table=True):
    """The usage ledger, written before the responses it bills are sent: one row per customer,
    key, route and UTC minute in each committed batch, holding those responses' units."""

    __tablename__ = "usage_event"
    __table_args__ = (
        Index(
            "ix_usage_event_unreported",
            "customer_id",
            "id",
            postgresql_where=text("report_id IS NULL"),
            sqlite_where=text("report_id IS NULL"),
        ),
        Index("ix_usage_event_customer_occurred", "customer_id", "occurred_at"),
        Index("ix_usage_event_report", "report_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    customer_id: int = Field(foreign_key="customer.id")
    api_key_id: str = Field(max_length=40)
    route: str = Field(max_length=200)
    units: int
    occurred_at: datetime = _at(default_now=True)
    report_id: int | None = Field(
        default=None,
        sa_column=Column(BigId, ForeignKey("usage_report.id"), nullable=True),
    )


class ReportStatus(StrEnum):
    PENDING = "pending"  # identifier fixed, not yet acknowledged by Stripe
    SENT = "sent"  # Stripe answered 2xx, or said the identifier already exists
    PARKED = "parked"  # refused by Stripe, or too old to re-send blindly: needs an operator


class UsageReport(SQLModel, table=True):
    """One meter event: usage aggregated per customer and window, under a fixed identifier."""

    __tablename__ = "usage_report"
    __table_args__ = (
        Index("ix_usage_report_due", "status", "next_attempt_at"),
        # The usage view sums reports per customer over a period (metering.usage).
        Index("ix_usage_report_customer_event_at", "customer_id", "event_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    identifier: str = Field(max_length=100, unique=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    stripe_customer_id: str = Field(max_length=255)
    event_name: str = Field(max_length=100)
    value: int
    event_at: datetime = _at()
    status: str = Field(default=ReportStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _at(default_now=True)
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _at(default_now=True)
    sent_at: datetime | None = _at(nullable=True)


class StripeEvent(SQLModel, table=True):
    """The webhook inbox: each Stripe event stored once by id, then handled once."""

    __tablename__ = "stripe_event"
    __table_args__ = (
        Index(
            "ix_stripe_event_unprocessed",
            "received_at",
            postgresql_where=text("processed_at IS NULL"),
            sqlite_where=text("processed_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    stripe_created_at: datetime = _at()
    payload: str
    received_at: datetime = _at(default_now=True)
    processed_at: datetime | None = _at(nullable=True)
    # Set when Stripe's answer made handling fail for good (e.g. 404): stored, answered 2xx,
    # not re-delivered; unprocessed with last_error, so `meterapi webhooks replay` still can.
    failed_at: datetime | None = _at(nullable=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=1000)


class CustomerLimit(SQLModel, table=True):
    """A customer's own limits, where they differ from the service's defaults (CONTRACT §7).

    ``rate_limit_set`` false: ``METERAPI_RATE_LIMIT`` applies. True: ``rate_limit`` applies,
    and NULL there means no rate limit at all. ``monthly_spend_cap`` is in the price's
    currency's minor units; NULL is no cap.
    """

    __tablename__ = "customer_limit"

    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    rate_limit_set: bool = False
    rate_limit: str | None = Field(default=None, max_length=32)
    monthly_spend_cap: int | None = Field(default=None, sa_column=Column(BigInteger()))
    updated_at: datetime = _at(default_now=True)


class OutboundStatus(StrEnum):
    PENDING = "pending"  # to be sent (again) at next_attempt_at
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # not delivered within the retry window: needs an operator
    GONE = "gone"  # the receiver answered 410 Gone: not retried


class OutboundEvent(SQLModel, table=True):
    """The outbox of outbound webhooks: written in the transaction of the change it announces,
    then delivered (at least once, under the same ``event_id``) by the background deliverer."""

    __tablename__ = "outbound_event"
    __table_args__ = (
        Index("ix_outbound_event_due", "status", "next_attempt_at"),
        # A customer's undelivered events in order: only the earliest of them may be sent.
        Index(
            "ix_outbound_event_pending_customer",
            "customer_id",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    # Sent as `webhook-id`, the same on every attempt: receivers dedupe by it.
    event_id: str = Field(max_length=40, unique=True)
    type: str = Field(max_length=100)
    customer_id: int = Field(foreign_key="customer.id")
    payload: str  # the exact JSON body sent, {"type", "timestamp", "data"}
    status: str = Field(default=OutboundStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _at(default_now=True)
    give_up_at: datetime = _at()
    # The lease of the deliverer sending it now; another may take it over once it has passed.
    claimed_until: datetime | None = _at(nullable=True)
    claimed_by: str | None = Field(default=None, max_length=40)
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _at(default_now=True, index=True)
    delivered_at: datetime | None = _at(nullable=True)


class SpendAlert(SQLModel, table=True):
    """A spend-cap threshold that fired for a customer in one billing period (CONTRACT §7): at
    most one row, so at most one ``usage.threshold_reached`` event, per threshold and period,
    whatever the number of processes and restarts."""

    __tablename__ = "spend_alert"

    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    period_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    threshold_percent: int = Field(primary_key=True)
    spent: int = Field(sa_column=Column(BigInteger(), nullable=False))  # minor units
    cap: int = Field(sa_column=Column(BigInteger(), nullable=False))  # minor units
    fired_at: datetime = _at(default_now=True)
