"""Spend-cap threshold alerts (CONTRACT §7, §8): ``usage.threshold_reached`` once per threshold
(50, 80, 100 % of the cap) per customer and billing period.

- A fired threshold is a ``spend_alert`` row (customer, period start, threshold), written in the
  same transaction as its outbox event: the primary key makes a second firing, by another process
  or after a restart, fail and roll back with its event.
- Nothing happens on the paid path. Each process's ``ThresholdAlerts`` looks, every
  ``interval_s``, at the customers it recorded units for since it last looked (``SpendGuard``
  keeps that set), and once at start at every customer with a cap (so a crossing whose process
  died before looking is not lost). An alert therefore fires at most ``interval_s`` plus one
  evaluation after the usage that crossed the threshold was committed. A lowered cap is
  noticed at the customer's next recorded usage.
- ``fired_thresholds`` is what the dashboard's banner shows; ``period_spend`` is the spend the
  alerts and the limits views agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.db import Sessionmaker
from meterapi.metering.limits import (
    ALERT_THRESHOLDS,
    KEEP,
    CapChange,
    Money,
    Pricing,
    RateChange,
    set_limits,
)
from meterapi.metering.limits_cache import LimitsCache
from meterapi.metering.spend import SpendGuard
from meterapi.metering.usage import Period, current_period, usage_totals
from meterapi.models import Customer, CustomerLimit, SpendAlert, utcnow
from meterapi.outbound import outbox

log = logging.getLogger(__name__)

INTERVAL_S = 1.0


async def period_spend(
    session: AsyncSession, *, customer: Customer, pricing: Pricing, now: datetime | None = None
) -> tuple[Period, Money | None]:
    """The current period and the spend in it from the ledger (None: the price is unknown)."""
    totals = await usage_totals(session, customer=customer, now=now or utcnow())
    return totals.period, await pricing.spend(totals.units)


async def fired_thresholds(
    session: AsyncSession, *, customer: Customer, now: datetime | None = None
) -> list[int]:
    """The thresholds (of 50, 80, 100) that fired for ``customer`` this period, ascending."""
    period = current_period(customer, now or utcnow())
    query = select(SpendAlert.threshold_percent).where(
        SpendAlert.customer_id == customer.id, SpendAlert.period_start == period.start
    )
    return sorted((await session.exec(query)).all())


def reached(spent: int, cap: int) -> list[int]:
    """The thresholds a spend has reached; none under a cap of 0 (nothing is crossed there)."""
    if cap <= 0:
        return []
    return [t for t in ALERT_THRESHOLDS if spent * 100 >= t * cap]


async def fire_due(
    session: AsyncSession, *, customer_id: int, pricing: Pricing, now: datetime | None = None
) -> list[int]:
    """Write the alerts (and their outbox events) of the thresholds the customer's spend has
    reached this period and that have not fired yet, into the caller's transaction."""
    now = now or utcnow()
    limit = await session.get(CustomerLimit, customer_id)
    if limit is None or limit.monthly_spend_cap is None:
        return []
    customer = await session.get(Customer, customer_id)
    if customer is None:
        return []
    cap = limit.monthly_spend_cap
    period, spent = await period_spend(session, customer=customer, pricing=pricing, now=now)
    if spent is None:
        return []
    fired = await _fired(session, customer_id, period)
    due = [t for t in reached(spent.amount, cap) if t not in fired]
    for threshold in due:
        session.add(
            SpendAlert(
                customer_id=customer_id,
                period_start=period.start,
                threshold_percent=threshold,
                spent=spent.amount,
                cap=cap,
                fired_at=now,
            )
        )
        await outbox.enqueue(
            session,
            type=outbox.EventType.USAGE_THRESHOLD_REACHED,
            customer_id=customer_id,
            data={
                "threshold_percent": threshold,
                "spent": {"amount": spent.amount, "currency": spent.currency},
                "cap": {"amount": cap, "currency": spent.currency},
            },
            now=now,
        )
    await session.flush()
    return due


async def change_limits(
    session: AsyncSession,
    *,
    customer_id: int,
    rate_limit: RateChange = KEEP,
    monthly_spend_cap: CapChange = KEEP,
    pricing: Pricing | None,
) -> CustomerLimit:
    """``limits.set_limits``, but a new cap first fires, under the cap still stored, what the
    usage so far has reached (``pricing`` None: the price is unknown, so nothing can be fired).

    The background look comes up to a second after the usage: a cap raised within that second
    (a customer who hit 402 and raised it at once) would otherwise swallow the alerts of a
    crossing that happened. The limits routes and ``meterapi limits set`` all change limits
    through here."""
    if pricing is not None and monthly_spend_cap is not KEEP:
        await _fire_before_cap_change(session, customer_id=customer_id, pricing=pricing)
    return await set_limits(
        session,
        customer_id=customer_id,
        rate_limit=rate_limit,
        monthly_spend_cap=monthly_spend_cap,
    )


async def _fire_before_cap_change(
    session: AsyncSession, *, customer_id: int, pricing: Pricing
) -> None:
    """A savepoint: another process firing the same alert first (the primary key) leaves the
    caller's change alone."""
    try:
        async with session.begin_nested():
            await fire_due(session, customer_id=customer_id, pricing=pricing)
    except IntegrityError:
        pass  # fired elsewhere


async def _fired(session: AsyncSession, customer_id: int, period: Period) -> set[int]:
    query = select(col(SpendAlert.threshold_percent)).where(
        SpendAlert.customer_id == customer_id, SpendAlert.period_start == period.start
    )
    return set((await session.exec(query)).all())


class ThresholdAlerts:
    """The background task that fires the alerts of the customers this process billed."""

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        pricing: Pricing,
        guard: SpendGuard,
        limits: LimitsCache | None = None,
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._pricing = pricing
        self._guard = guard
        self._limits = limits  # the cached caps: no read for the customers without one
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """List the customers with a cap now; their alerts are looked at once in the background
        (a crossing whose process ended before looking is not lost), then every ``interval_s``
        those with new usage."""
        capped = await self._capped()
        self._task = asyncio.create_task(self._run(capped), name="meterapi-spend-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, capped: set[int]) -> None:
        await self.evaluate(capped)
        while True:
            await asyncio.sleep(self._interval_s)
            touched, self._guard.touched = self._guard.touched, set()
            await self.evaluate(await self._with_cap(touched))

    async def _with_cap(self, customer_ids: set[int]) -> set[int]:
        if self._limits is None:
            return customer_ids
        capped = set()
        for customer_id in customer_ids:
            with contextlib.suppress(Exception):  # unknown: fire_due reads it
                if (await self._limits.get(customer_id)).monthly_spend_cap is None:
                    continue
            capped.add(customer_id)
        return capped

    async def _capped(self) -> set[int]:
        try:
            async with self._sessionmaker() as session:
                query = select(CustomerLimit.customer_id).where(
                    col(CustomerLimit.monthly_spend_cap).is_not(None)
                )
                return set((await session.exec(query)).all())
        except Exception as exc:
            log.warning("spend alerts: the capped customers could not be listed: %s", exc)
            return set()

    async def evaluate(self, customer_ids: set[int]) -> None:
        """Fire what is due for each customer, each in its own transaction. One that fails (the
        database, or another process firing the same alert first) is looked at again later."""
        for customer_id in sorted(customer_ids):
            try:
                async with self._sessionmaker() as session:
                    if await fire_due(session, customer_id=customer_id, pricing=self._pricing):
                        await session.commit()
            except IntegrityError:
                self._guard.touched.add(customer_id)  # fired elsewhere: look again
            except Exception as exc:
                log.warning("spend alerts of customer %s: %s", customer_id, type(exc).__name__)
                self._guard.touched.add(customer_id)
