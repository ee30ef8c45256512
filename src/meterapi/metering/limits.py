"""A customer's limits (CONTRACT §7): the stored override, what applies, and the spend so far.

This module stores and reads limits; the paid path reads them from ``metering.limits_cache``,
which every change here invalidates (``set_limits`` bumps the cache revision in its own
transaction). The rate limit
that applies is the customer's override where the operator set one (which may be "none at all"),
else ``METERAPI_RATE_LIMIT``. The monthly spend cap is the customer's own; none means no cap.
The spend is this period's units times the price's unit amount, in the price's minor units.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.config import parse_rate_limit
from meterapi.errors import DomainError, ValidationFailed
from meterapi.keys import invalidation
from meterapi.models import Customer, CustomerLimit, utcnow

log = logging.getLogger(__name__)

ALERT_THRESHOLDS: Final = (50, 80, 100)
MAX_SPEND_CAP = 10**15  # minor units; far past any real cap, well inside a BIGINT


class Keep(Enum):
    """Leave this limit as it is (an argument the caller did not give)."""

    KEEP = "keep"


class Default(Enum):
    """Drop the customer's rate-limit override: ``METERAPI_RATE_LIMIT`` applies again."""

    DEFAULT = "default"


KEEP: Final = Keep.KEEP
DEFAULT: Final = Default.DEFAULT

RateChange = str | None | Keep | Default
CapChange = int | None | Keep


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str


@dataclass(frozen=True)
class Limits:
    """What applies to one customer now."""

    rate_limit: str | None
    rate_limit_overridden: bool
    monthly_spend_cap: int | None
    spent_units: int


def validate_rate(text: str) -> str:
    """A rate such as ``50/second``, normalised; ``ValidationFailed`` otherwise."""
    try:
        parse_rate_limit(text)
    except ValueError as exc:
        raise ValidationFailed(f"rate_limit: {exc}") from exc
    return text.strip()


async def set_limits(
    session: AsyncSession,
    *,
    customer_id: int,
    rate_limit: RateChange = KEEP,
    monthly_spend_cap: CapChange = KEEP,
) -> CustomerLimit:
    """Store a customer's override (``meterapi limits set`` and the operator API share this).

    ``rate_limit``: a rate, None for no rate limit, ``DEFAULT`` for the service default.
    ``monthly_spend_cap``: minor units ≥ 0, or None for no cap. ``KEEP`` leaves either as is.
    """
    row = await _limit_row(session, customer_id)
    if isinstance(rate_limit, str):
        row.rate_limit_set, row.rate_limit = True, validate_rate(rate_limit)
    elif rate_limit is None:
        row.rate_limit_set, row.rate_limit = True, None
    elif rate_limit is DEFAULT:
        row.rate_limit_set, row.rate_limit = False, None
    if monthly_spend_cap is None or isinstance(monthly_spend_cap, int):
        if monthly_spend_cap is not None and not 0 <= monthly_spend_cap <= MAX_SPEND_CAP:
            raise ValidationFailed(f"monthly_spend_cap must be between 0 and {MAX_SPEND_CAP}.")
        row.monthly_spend_cap = monthly_spend_cap
    row.updated_at = utcnow()
    session.add(row)
    await session.flush()
    # Every process's limits cache drops this customer once the change commits.
    await invalidation.bump(session, customer_id=customer_id)
    return row


async def _limit_row(session: AsyncSession, customer_id: int) -> CustomerLimit:
    """The customer's row, made if missing. Two writers racing to make it both get the one row
    (the loser's insert waits for the winner's commit, fails, and reads it), not an error."""
    row = await session.get(CustomerLimit, customer_id)
    if row is not None:
        return row
    try:
        async with session.begin_nested():
            row = CustomerLimit(customer_id=customer_id)
            session.add(row)
    except IntegrityError:
        row = await session.get(CustomerLimit, customer_id, populate_existing=True)
        assert row is not None, "the row that collided is there once the other write committed"
    return row


async def limits_for(
    session: AsyncSession, *, customer: Customer, default_rate: str | None, units: int
) -> Limits:
    """The limits that apply to ``customer``, given this period's ``units`` so far."""
    assert customer.id is not None
    row = await session.get(CustomerLimit, customer.id)
    overridden = row is not None and row.rate_limit_set
    return Limits(
        rate_limit=row.rate_limit if row is not None and overridden else default_rate,
        rate_limit_overridden=overridden,
        monthly_spend_cap=row.monthly_spend_cap if row is not None else None,
        spent_units=units,
    )


class Pricing:
    """The metered price's unit amount, read from Stripe once per process and kept."""

    def __init__(self, gateway: StripeGateway, price_id: str | None) -> None:
        self._gateway = gateway
        self._price_id = price_id

    async def spend(self, units: int) -> Money | None:
        """``units`` at the price's unit amount, rounded to a whole minor unit as an invoice
        line is; None (and a warning logged) when the price cannot be read."""
        if self._price_id is None:
            return None
        try:
            unit_amount, currency = await self._gateway.unit_price(self._price_id)
        except DomainError as exc:
            log.warning("the price's unit amount is unavailable: %s", exc.code)
            return None
        amount = (unit_amount * units).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return Money(int(amount), currency)
