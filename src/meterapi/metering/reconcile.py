"""Reconciliation: does Stripe hold, per customer and window, what the ledger says it was sent?

For each customer, over a window (by default the customer's current billing period):

- ``ledger_units``: every unit the ledger holds for the window;
- ``pending_units``: those Stripe has not acknowledged yet (unclaimed rows, pending and parked
  reports);
- ``stripe_units``: the sum of the meter's event summaries for the customer over the window;
- ``drift = stripe_units - (ledger_units - pending_units)``: zero when Stripe holds exactly what
  it acknowledged. Positive: Stripe counts usage we did not send (or sent twice); negative:
  Stripe lost usage it acknowledged.

Windows are rounded out to whole minutes, as Stripe's summaries require; the ledger is read over
the same minutes (a report is dated within the minute of the rows it holds). Stripe is read with
bounded concurrency and, against real Stripe, paced below its read limit (25 requests/s in test
mode, 100 in live mode); a 429 is retried with exponential backoff and jitter. A customer whose
drift is not zero is read again once after a pause: the reporter may have sent usage between the
two reads, and Stripe's summaries are eventually consistent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.db import Sessionmaker
from meterapi.errors import StripeRateLimited
from meterapi.metering.usage import Period, current_period
from meterapi.models import Customer, ReportStatus, UsageEvent, UsageReport, utcnow

CONCURRENCY = 10
MAX_RATE_LIMITED_TRIES = 8
RECHECK_DELAY_S = 2.0


@dataclass(frozen=True)
class Drift:
    customer_id: str
    start: datetime
    end: datetime
    ledger_units: int
    stripe_units: int
    pending_units: int

    @property
    def drift(self) -> int:
        return self.stripe_units - (self.ledger_units - self.pending_units)


def minute_window(start: datetime, end: datetime) -> Period:
    """[start, end) rounded outwards to whole minutes."""
    floor = start.replace(second=0, microsecond=0)
    ceil = end.replace(second=0, microsecond=0)
    if ceil < end:
        ceil += timedelta(minutes=1)
    return Period(floor, ceil)


async def ledger_units(
    session: AsyncSession, *, customer_id: int, window: Period
) -> tuple[int, int]:
    """(units in the window, of which Stripe acknowledged) for one customer.

    Claimed usage is read from its reports (dated at ``event_at``), unclaimed rows from the
    ledger; both index-backed, as the usage view reads them.
    """
    event_at = col(UsageReport.event_at)
    units, sent = (
        await session.exec(
            select(
                func.coalesce(func.sum(UsageReport.value), 0),
                func.coalesce(
                    func.sum(UsageReport.value).filter(
                        col(UsageReport.status) == ReportStatus.SENT
                    ),
                    0,
                ),
            ).where(
                col(UsageReport.customer_id) == customer_id,
                event_at >= window.start,
                event_at < window.end,
            )
        )
    ).one()
    occurred_at = col(UsageEvent.occurred_at)
    unclaimed = (
        await session.exec(
            select(func.coalesce(func.sum(UsageEvent.units), 0)).where(
                col(UsageEvent.customer_id) == customer_id,
                col(UsageEvent.report_id).is_(None),
                occurred_at >= window.start,
                occurred_at < window.end,
            )
        )
    ).one()
    return int(units) + int(unclaimed), int(sent)


class Pace:
    """At most ``per_second`` starts per second (None: no pacing), shared by all workers."""

    def __init__(self, per_second: float | None) -> None:
        self._gap = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self._gap:
            return
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self._gap


@dataclass
class Reconciler:
    sessionmaker: Sessionmaker
    gateway: StripeGateway
    concurrency: int = CONCURRENCY
    recheck_delay_s: float = RECHECK_DELAY_S
    on_progress: Callable[[int, int], None] | None = None

    async def run(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> list[Drift]:
        """One row per customer, in customer order. ``start``/``end`` default to each
        customer's current billing period; give both or neither."""
        if (start is None) != (end is None):
            raise ValueError("give both start and end, or neither")
        now = utcnow()
        async with self.sessionmaker() as session:
            customers = (await session.exec(select(Customer).order_by(col(Customer.id)))).all()
        windows = {
            c.id: _clamped(
                minute_window(*((start, end) if start and end else _period(c, now))), now
            )
            for c in customers
        }
        meter_id = await self.gateway.find_meter_id()
        pace = Pace(self.gateway.read_requests_per_second())
        limit = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(customer: Customer) -> Drift:
            nonlocal done
            async with limit:
                row = await self._check(customer, windows[customer.id], meter_id, pace)
            done += 1
            if self.on_progress is not None:
                self.on_progress(done, len(customers))
            return row

        rows = list(await asyncio.gather(*(one(c) for c in customers)))
        drifting = [i for i, row in enumerate(rows) if row.drift]
        if drifting:
            await asyncio.sleep(self.recheck_delay_s)
            by_id = {c.stripe_customer_id: c for c in customers}
            for i in drifting:
                customer = by_id[rows[i].customer_id]
                rows[i] = await self._check(customer, windows[customer.id], meter_id, pace)
        return rows

    async def _check(self, customer: Customer, window: Period, meter_id: str, pace: Pace) -> Drift:
        assert customer.id is not None
        async with self.sessionmaker() as session:
            units, sent = await ledger_units(session, customer_id=customer.id, window=window)
        stripe_units = await self._stripe_units(customer, window, meter_id, pace)
        return Drift(
            customer_id=customer.stripe_customer_id,
            start=window.start,
            end=window.end,
            ledger_units=units,
            stripe_units=stripe_units,
            pending_units=units - sent,
        )

    async def _stripe_units(
        self, customer: Customer, window: Period, meter_id: str, pace: Pace
    ) -> int:
        for attempt in range(1, MAX_RATE_LIMITED_TRIES + 1):
            await pace.wait()
            try:
                return await self.gateway.meter_usage_total(
                    meter_id=meter_id,
                    stripe_customer_id=customer.stripe_customer_id,
                    start=window.start,
                    end=window.end,
                )
            except StripeRateLimited:
                if attempt == MAX_RATE_LIMITED_TRIES:
                    raise
                await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1))
        raise AssertionError("unreachable")


def _clamped(window: Period, now: datetime) -> Period:
    """Not past the current minute: the future holds no usage yet."""
    latest = minute_window(now, now).end
    end = min(window.end, latest) if window.start < latest else window.start + timedelta(minutes=1)
    return Period(window.start, max(end, window.start + timedelta(minutes=1)))


def _period(customer: Customer, now: datetime) -> tuple[datetime, datetime]:
    period = current_period(customer, now)
    return period.start, period.end
