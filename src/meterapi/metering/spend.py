"""Spend caps on the paid path (CONTRACT §7): 402 ``spend_cap_reached`` once this period's spend
reaches the customer's cap, without a database read per request.

The spend is this period's units in our ledger times the price's unit amount, rounded to a whole
minor unit as ``limits.Pricing`` rounds it. So a cap of C minor units is a number of units,
``cap_units``: the fewest units whose spend reaches C. Each process keeps, per customer:

- ``ledger_units``: the customer's units this period as the ledger held them at the last exact
  read (every process's committed usage), the period they belong to, and when the read began;
- this process's own units committed since that read began (``record``, which the usage layer
  calls once a request's units are durable).

``check`` (one call in the paid admission):

1. No cap → admit.
2. The read is younger than ``refresh_s`` and the period has not ended: the estimate (ledger
   units + own units since) is compared with ``cap_units``. At or over it → 402, no I/O. More
   than ``margin`` units under it → admit, no I/O.
3. Otherwise (no read yet, an old one, or an estimate within ``margin`` of the cap) the request
   waits for an exact read of the ledger that began after it arrived, one at a time per customer
   (requests arriving meanwhile share the next one), and is judged on it.

So far from the cap a request costs a dictionary look-up, one read per customer and second keeps
the estimate current, and near the cap every decision rests on the ledger as it stood after the
request arrived: what gets past the cap is what was already in flight (docs/spend-caps.md).
A higher cap applies at the next request (the cap comes from the limits cache); a new period at
the latest ``refresh_s`` after Stripe's webhook moved it. A price that cannot be read fails open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from sqlmodel import col, select

from meterapi.billing.gateway import StripeGateway
from meterapi.db import Sessionmaker
from meterapi.errors import DomainError, SpendCapReached
from meterapi.metering.usage import Period, UsageTotals, usage_totals
from meterapi.models import Customer, CustomerLimit, utcnow

log = logging.getLogger(__name__)

REFRESH_S = 1.0
# Within this many units of the cap (a fifth of it, at least MIN_MARGIN) every check reads.
MARGIN_FRACTION = 5
MIN_MARGIN = 100
PRICE_RETRY_S = 10.0
PRICE_WAIT_S = 2.0  # the longest a capped call waits for the price before going on unchecked
RATE_WINDOW_S = 0.5  # the shortest span a customer's rate is measured over
RATE_STALE_S = 5.0  # a rate older than this is forgotten


def spend_of(units: int, unit_amount: Decimal) -> int:
    """``units`` at ``unit_amount`` (minor units), rounded as an invoice line is."""
    return int((unit_amount * units).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def cap_units(cap: int, unit_amount: Decimal) -> int | None:
    """The fewest units whose spend reaches ``cap``; None when no number does (a free price)."""
    if cap <= 0:
        return 0
    if unit_amount <= 0:
        return None
    # spend(n) >= cap iff n * unit_amount >= cap - 1/2; then step off any rounding of the division.
    n = max(0, int(((cap - Decimal("0.5")) / unit_amount).to_integral_value(ROUND_CEILING)))
    while n > 0 and spend_of(n - 1, unit_amount) >= cap:
        n -= 1
    while spend_of(n, unit_amount) < cap:
        n += 1
    return n


def margin(limit: int) -> int:
    """How near the cap (in units) a customer is judged on an exact read for every request."""
    return max(limit // MARGIN_FRACTION, MIN_MARGIN)


@dataclass(frozen=True, slots=True)
class Tally:
    period: Period
    ledger_units: int  # this period's units in the ledger when the read ran
    own_at_read: int  # this process's ``record`` counter when the read began
    own_at_end: int  # ... and when it ended (units recorded in between may or may not be in it)
    read_at: float  # time.monotonic() when the read began
    # The customer's units per second in the ledger (every process's), measured from the read
    # at ``base_at`` (``base_units`` then) once at least RATE_WINDOW_S apart; None until then.
    rate: float | None
    base_at: float
    base_units: int


class SpendGuard:
    """Per-process running totals of spend per customer, reconciled from the ledger."""

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        gateway: StripeGateway,
        price_id: str | None,
        *,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._gateway = gateway
        self._price_id = price_id
        self.refresh_s = refresh_s
        self._unit_amount: Decimal | None = None
        self._price_task: asyncio.Task[None] | None = None
        self._price_tried = -PRICE_RETRY_S
        self._limits: dict[int, int | None] = {}  # cap → cap_units, for the caps seen
        self._own: dict[int, int] = {}  # customer → units this process recorded, ever
        self._tallies: dict[int, Tally] = {}
        self._reads: dict[int, tuple[float, asyncio.Task[Tally | None]]] = {}
        self.touched: set[int] = set()  # customers with units recorded since the alerts looked

    async def start(self, *, timeout_s: float = 5.0) -> None:
        """Read the price before serving when a customer has a cap, so the first capped request
        has it (otherwise at the first capped request, which is admitted meanwhile)."""
        try:
            async with self._sessionmaker() as session:
                query = select(CustomerLimit.customer_id).where(
                    col(CustomerLimit.monthly_spend_cap).is_not(None)
                )
                capped = (await session.exec(query.limit(1))).first() is not None
        except Exception as exc:
            log.warning("spend caps: the caps could not be read at start: %s", exc)
            capped = True
        if capped:
            await self.load_price(timeout_s=timeout_s)

    async def load_price(self, *, timeout_s: float = 5.0) -> bool:
        """Read the price now (waiting at most ``timeout_s``); whether it is known."""
        self._price_tried = -PRICE_RETRY_S
        self._fetch_price()
        if self._price_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._price_task), timeout_s)
        return self._unit_amount is not None

    async def stop(self) -> None:
        tasks = [t for _, t in self._reads.values()]
        if self._price_task is not None:
            tasks.append(self._price_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def record(self, customer_id: int, units: int) -> None:
        """``units`` of this customer are committed to the ledger by this process."""
        self._own[customer_id] = self._own.get(customer_id, 0) + units
        self.touched.add(customer_id)

    async def check(self, customer_id: int, cap: int | None) -> None:
        """Raise ``SpendCapReached`` when the customer's spend this period has reached ``cap``."""
        if cap is None:
            return
        if self._unit_amount is None and cap > 0:
            await self._price_now()
        limit = self._limit(cap)
        if limit is None:
            return
        arrived = time.monotonic()
        tally = self._tallies.get(customer_id)
        fresh = tally is not None and arrived - tally.read_at < self.refresh_s
        if tally is not None and fresh and utcnow() < tally.period.end:
            if self._at_least(customer_id, tally) >= limit:
                raise SpendCapReached()
            estimate = self._estimate(customer_id, tally)
            # Far from the cap: with what every process may have added since the read (twice
            # the rate the ledger last grew at, for the read's age) it still leaves the margin.
            # Until the rate is known, every check reads.
            if tally.rate is not None:
                unseen = 2 * tally.rate * (arrived - tally.read_at)
                if limit - estimate - unseen > margin(limit):
                    return
        tally = await self._read_after(customer_id, arrived)
        if tally is not None and self._at_least(customer_id, tally) >= limit:
            raise SpendCapReached()

    def _estimate(self, customer_id: int, tally: Tally) -> int:
        """The most the ledger may hold now, as far as this process knows: admitting on it
        never lets this process's own units past the margin unseen."""
        return tally.ledger_units + self._own.get(customer_id, 0) - tally.own_at_read

    def _at_least(self, customer_id: int, tally: Tally) -> int:
        """The least the ledger holds now: a refusal rests on it, so none comes before the cap
        (this process's units recorded while the read ran may already be in ``ledger_units``)."""
        return tally.ledger_units + self._own.get(customer_id, 0) - tally.own_at_end

    def _limit(self, cap: int) -> int | None:
        """``cap_units`` of ``cap`` at the price; None (admit) while the price is unknown."""
        if self._unit_amount is None:
            self._fetch_price()
            return None if cap > 0 else 0
        if cap not in self._limits:
            if len(self._limits) > 10_000:
                self._limits.clear()
            self._limits[cap] = cap_units(cap, self._unit_amount)
        return self._limits[cap]

    async def _read_after(self, customer_id: int, arrived: float) -> Tally | None:
        """A tally from a read that began at or after ``arrived``: one read at a time per
        customer; a request arriving while one runs waits for it, then shares the next."""
        while True:
            current = self._reads.get(customer_id)
            if current is None:
                started = time.monotonic()
                task = asyncio.create_task(self._read(customer_id, started))
                self._reads[customer_id] = (started, task)
                task.add_done_callback(lambda _: self._reads.pop(customer_id, None))
                return await asyncio.shield(task)
            started, task = current
            if started >= arrived:
                return await asyncio.shield(task)
            # shield: a cancelled request does not cancel a read others wait for.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            await asyncio.sleep(0)  # let its done-callback clear the slot

    async def _read(self, customer_id: int, started: float) -> Tally | None:
        own = self._own.get(customer_id, 0)
        try:
            async with self._sessionmaker() as session:
                customer = await session.get(Customer, customer_id)
                if customer is None:
                    return None
                totals = await usage_totals(session, customer=customer, now=utcnow())
        except Exception as exc:
            # The ledger cannot be read: the last estimate stands (or none, and the call goes
            # on); recording usage needs the database anyway.
            log.warning("spend of customer %s not read: %s", customer_id, type(exc).__name__)
            return self._tallies.get(customer_id)
        kept = self._tallies.get(customer_id)
        own_end = self._own.get(customer_id, 0)
        rate, base_at, base_units = _rate(kept, totals, started)
        tally = Tally(totals.period, totals.units, own, own_end, started, rate, base_at, base_units)
        if kept is None or kept.read_at <= started:
            self._tallies[customer_id] = tally
        return tally

    async def _price_now(self, timeout_s: float = PRICE_WAIT_S) -> None:
        """Wait (a little) for the price rather than admit a capped call unchecked; a price that
        could not be read is tried again only every PRICE_RETRY_S, and meanwhile not waited for."""
        self._fetch_price()
        if self._price_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._price_task), timeout_s)

    def _fetch_price(self) -> None:
        if self._price_id is None or self._price_task is not None:
            return
        if time.monotonic() - self._price_tried < PRICE_RETRY_S:
            return
        self._price_tried = time.monotonic()
        self._price_task = asyncio.create_task(self._load_price(self._price_id))

    async def _load_price(self, price_id: str) -> None:
        try:
            self._unit_amount = (await self._gateway.unit_price(price_id))[0]
        except DomainError as exc:
            log.warning("spend caps not enforced: the price cannot be read (%s)", exc.code)
        finally:
            self._price_task = None


def _rate(
    kept: Tally | None, totals: UsageTotals, started: float
) -> tuple[float | None, float, int]:
    """The customer's rate (units per second, every process's) and the read it is measured from:
    measured again once RATE_WINDOW_S has passed since that read; None (not known) for a new
    period, a first read, or after a pause long enough that the old figure says nothing.

    It rises at once and falls by at most half per measurement: a stall (a slow moment of the
    machine, a client pausing) measured as a low rate must not leave the far-from-the-cap check
    extrapolating too little when the customer's calls come back at their earlier pace."""
    if kept is None or kept.period != totals.period or started - kept.base_at > RATE_STALE_S:
        return None, started, totals.units
    elapsed = started - kept.base_at
    if elapsed < RATE_WINDOW_S:
        return kept.rate, kept.base_at, kept.base_units
    measured = max(0, totals.units - kept.base_units) / elapsed
    if kept.rate is not None:
        measured = max(measured, kept.rate / 2)
    return measured, started, totals.units
