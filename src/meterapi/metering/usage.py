"""What a customer has used this period, from the ledger, and what Stripe will invoice for it."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, cast, func, literal, union_all
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.db import is_postgres
from meterapi.errors import StripeUnavailable
from meterapi.models import Customer, ReportStatus, UsageEvent, UsageReport

log = logging.getLogger(__name__)

INVOICE_CACHE_S = 30.0


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class UsageTotals:
    period: Period
    units: int
    reported_units: int
    by_day: list[tuple[date, int]]

    @property
    def pending_units(self) -> int:
        return self.units - self.reported_units


def current_period(customer: Customer, now: datetime) -> Period:
    """The subscription item's period as Stripe last told us; else the calendar month (UTC)."""
    start, end = customer.current_period_start, customer.current_period_end
    if start is not None and end is not None and start <= now < end:
        return Period(start, end)
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return Period(month_start, next_month)


def _utc_day(session: AsyncSession, moment: Any) -> ColumnElement[Any]:
    if is_postgres(session):
        return cast(func.timezone("UTC", moment), Date)
    # SQLite keeps UTC text; date() takes its first ten characters' worth.
    return func.date(moment)


async def usage_totals(session: AsyncSession, *, customer: Customer, now: datetime) -> UsageTotals:
    """This period's units, reported and per day, at a cost that does not grow with traffic.

    Claimed usage is read from its reports (one per customer and minute per claim, summed by the
    reporter), unclaimed usage from the ledger rows not yet claimed (the partial index on
    unreported usage keeps those few). A report counts at its ``event_at``, the moment Stripe
    bills it at, so these figures add up as the invoice does. Summing the ledger's rows instead
    read every call of the period on every look: at a few hundred calls a second, seconds per
    request within a day.
    """
    assert customer.id is not None
    period = current_period(customer, now)
    event_at = col(UsageReport.event_at)
    report_day = _utc_day(session, event_at)
    claimed = (
        select(
            report_day.label("day"),
            func.sum(UsageReport.value).label("units"),
            func.sum(UsageReport.value).filter(col(UsageReport.status) == ReportStatus.SENT),
        )
        .where(
            col(UsageReport.customer_id) == customer.id,
            event_at >= period.start,
            event_at < period.end,
        )
        .group_by(report_day)
    )
    occurred_at = col(UsageEvent.occurred_at)
    row_day = _utc_day(session, occurred_at)
    unclaimed = (
        select(row_day, func.sum(UsageEvent.units), literal(0))
        .where(
            col(UsageEvent.customer_id) == customer.id,
            col(UsageEvent.report_id).is_(None),
            occurred_at >= period.start,
            occurred_at < period.end,
        )
        .group_by(row_day)
    )
    # One statement, so one snapshot: read apart, a claim committed between the two reads
    # (PostgreSQL reads each statement afresh) would drop its rows from both.
    rows = (await session.exec(union_all(claimed, unclaimed))).all()  # type: ignore[call-overload]
    days: dict[date, int] = defaultdict(int)
    reported = 0
    for day, units, sent in rows:
        days[_as_date(day)] += int(units or 0)
        reported += int(sent or 0)
    by_day = sorted(days.items())
    return UsageTotals(period, sum(n for _, n in by_day), reported, by_day)


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


class InvoicePreviews:
    """Stripe's upcoming invoice per customer, cached briefly: the dashboard polls it."""

    def __init__(self, gateway: StripeGateway, *, ttl_s: float = INVOICE_CACHE_S) -> None:
        self._gateway = gateway
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, int, dict[str, Any]]] = {}

    async def get(self, customer: Customer, *, reported_units: int) -> dict[str, Any] | None:
        """The preview, or None when Stripe cannot answer now (the caller says so).

        A cached preview serves only while the units Stripe acknowledged are unchanged: new
        usage reaching Stripe makes the next look fetch a fresh one.
        """
        cached = self._cache.get(customer.stripe_customer_id)
        if (
            cached is not None
            and cached[1] == reported_units
            and time.monotonic() - cached[0] < self._ttl_s
        ):
            return cached[2]
        try:
            invoice = await self._gateway.upcoming_invoice(
                stripe_customer_id=customer.stripe_customer_id,
                subscription_id=customer.subscription_id,
            )
        except StripeUnavailable as exc:
            log.warning("invoice preview unavailable: %s", exc.message)
            return None
        preview = {
            "amount_due": invoice.get("amount_due", 0),
            "currency": invoice.get("currency"),
            "total": invoice.get("total", 0),
            "lines": [
                {
                    "description": line.get("description"),
                    "quantity": line.get("quantity"),
                    "amount": line.get("amount"),
                    "period": line.get("period"),
                }
                for line in (invoice.get("lines") or {}).get("data", [])
            ],
        }
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[customer.stripe_customer_id] = (time.monotonic(), reported_units, preview)
        return preview
