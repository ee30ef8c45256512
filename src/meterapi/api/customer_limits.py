"""``GET /v1/limits`` and ``PUT /v1/limits``: the customer's own limits (CONTRACT §7).

The customer reads the rate limit that applies to their keys, their monthly spend cap and this
period's spend, and sets or clears the cap. The operator API shows the same shape for any
customer: ``read_limits`` and ``LimitsOut.of`` here are the one place that reads and
shapes it.
"""

from __future__ import annotations

from typing import Any, Self

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictInt
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.api.bodies import RequestBody
from meterapi.api.deps import CustomerDep, CustomerReadDep, RuntimeDep, SessionDep
from meterapi.api.responses import KEY_REFUSED, KEY_ROTATED, responses
from meterapi.errors import NotFound
from meterapi.metering import alerts, limits
from meterapi.metering.limits import Limits, Money
from meterapi.metering.usage import usage_totals
from meterapi.models import Customer, utcnow
from meterapi.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["limits"])

PRICE_UNAVAILABLE = "The price's unit amount could not be read from Stripe; the spend is unknown."


class MoneyOut(BaseModel):
    amount: int = Field(description="Minor units of the currency (cents for usd).")
    currency: str | None = Field(description="The metered price's currency; null if unknown.")


class LimitsOut(BaseModel):
    """A customer's limits as ``GET /v1/limits`` shows them."""

    rate_limit: str | None = Field(
        description="Requests allowed per API key on paid routes, e.g. 100/second; "
        "null for no rate limit.",
        examples=["100/second"],
    )
    monthly_spend_cap: MoneyOut | None = Field(
        description="Paid calls are refused (402 spend_cap_reached) once this period's spend "
        "reaches it; null for no cap."
    )
    spent_this_period: MoneyOut | None = Field(
        description="This billing period's units times the price's unit amount, from our own "
        "ledger (current to the request); null only while the price cannot be read."
    )
    alert_thresholds: list[int] = Field(
        description="Percentages of the cap at which an alert fires, once per period each."
    )
    warning: str | None = Field(default=None, description="Set when a figure is unavailable.")

    @classmethod
    def of(cls, found: Limits, spent: Money | None, **extra: Any) -> Self:
        currency = spent.currency if spent is not None else None
        cap = found.monthly_spend_cap
        return cls(
            rate_limit=found.rate_limit,
            monthly_spend_cap=MoneyOut(amount=cap, currency=currency) if cap is not None else None,
            spent_this_period=MoneyOut(amount=spent.amount, currency=currency) if spent else None,
            alert_thresholds=list(limits.ALERT_THRESHOLDS),
            warning=None if spent is not None else PRICE_UNAVAILABLE,
            **extra,
        )


class CustomerLimitsOut(LimitsOut):
    can_change: bool = Field(
        description="Whether the key that made this request may change the limits: false for "
        "a key in its rotation grace period (it may read them, PUT answers 403 key_rotated)."
    )


class SpendCapIn(RequestBody):
    # Strict: true, 12.5 and "100" are mistakes to report, not amounts to guess at.
    amount: StrictInt = Field(
        ge=0,
        le=limits.MAX_SPEND_CAP,
        description="Minor units of the price's currency (cents for usd); 0 refuses every "
        "paid call.",
        examples=[5000],
    )


class LimitsPut(RequestBody):
    """The whole of what a customer may change: their monthly spend cap."""

    monthly_spend_cap: SpendCapIn | None = Field(
        description="The new cap, or null for no cap. Required: send null to clear it."
    )


async def price_known(runtime: Runtime) -> bool:
    """Whether the price's unit amount can be read. Ask before the request's session holds a
    connection: it may wait on Stripe (once per process, or again after a failure), and a slow
    Stripe must not hold the pool that key lookups need. Once read, the amount is kept."""
    return await runtime.pricing.spend(0) is not None


async def read_limits(
    customer: Customer, *, session: AsyncSession, runtime: Runtime, priced: bool
) -> tuple[Limits, Money | None]:
    """What applies to ``customer`` now, and this period's spend: None unless ``priced``
    (``price_known`` said so before), so that no Stripe call is made from here."""
    totals = await usage_totals(session, customer=customer, now=utcnow())
    found = await limits.limits_for(
        session, customer=customer, default_rate=runtime.settings.rate_limit, units=totals.units
    )
    spent = await runtime.pricing.spend(found.spent_units) if priced else None
    return found, spent


async def _own_customer(session: AsyncSession, customer_id: int) -> Customer:
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise NotFound()
    return customer


@router.get(
    "/limits",
    response_model=CustomerLimitsOut,
    summary="Your rate limit, monthly spend cap and spend so far this billing period",
    responses=responses(KEY_REFUSED),
)
async def get_limits(
    caller: CustomerReadDep, session: SessionDep, runtime: RuntimeDep
) -> CustomerLimitsOut:
    priced = await price_known(runtime)
    customer = await _own_customer(session, caller.customer_id)
    found, spent = await read_limits(customer, session=session, runtime=runtime, priced=priced)
    return CustomerLimitsOut.of(found, spent, can_change=not caller.rotated)


@router.put(
    "/limits",
    response_model=CustomerLimitsOut,
    summary="Set, change or clear your monthly spend cap (applies at once, on every replica)",
    responses=responses(
        KEY_REFUSED,
        KEY_ROTATED,
        {422: "The body is not a cap as described (validation_error)"},
    ),
)
async def put_limits(
    body: LimitsPut, caller: CustomerDep, session: SessionDep, runtime: RuntimeDep
) -> CustomerLimitsOut:
    priced = await price_known(runtime)
    customer = await _own_customer(session, caller.customer_id)
    cap = body.monthly_spend_cap
    await alerts.change_limits(
        session,
        customer_id=caller.customer_id,
        monthly_spend_cap=cap.amount if cap is not None else None,
        pricing=runtime.pricing if priced else None,
    )
    found, spent = await read_limits(customer, session=session, runtime=runtime, priced=priced)
    return CustomerLimitsOut.of(found, spent, can_change=True)
