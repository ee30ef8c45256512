"""``GET /v1/usage``: this period's usage from the ledger and the upcoming invoice."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.api.deps import CustomerReadDep, RuntimeDep, SessionDep
from meterapi.api.responses import KEY_INVALID, responses
from meterapi.db import release_before_waiting
from meterapi.errors import NotFound
from meterapi.metering.usage import usage_totals
from meterapi.models import Customer, utcnow
from meterapi.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["usage"])


class PeriodOut(BaseModel):
    start: datetime
    end: datetime


class DayOut(BaseModel):
    date: date
    units: int


class UpcomingInvoiceOut(BaseModel):
    amount_due: int
    currency: str | None
    total: int
    lines: list[dict[str, Any]]


class UsageOut(BaseModel):
    customer_id: str
    period: PeriodOut
    units: int
    reported_units: int
    pending_units: int
    by_day: list[DayOut]
    upcoming_invoice: UpcomingInvoiceOut | None
    warning: str | None = None


@router.get(
    "/usage",
    response_model=UsageOut,
    summary="Your usage this billing period (from the ledger) and your upcoming invoice",
    responses=responses(KEY_INVALID),
)
async def get_usage(caller: CustomerReadDep, session: SessionDep, runtime: RuntimeDep) -> UsageOut:
    customer = await session.get(Customer, caller.customer_id)
    if customer is None:
        raise NotFound()
    return await usage_of(customer, session=session, runtime=runtime)


async def usage_of(customer: Customer, *, session: AsyncSession, runtime: Runtime) -> UsageOut:
    """One customer's usage as ``GET /v1/usage`` shows it (the operator API shows it too)."""
    totals = await usage_totals(session, customer=customer, now=utcnow())
    await release_before_waiting(session)  # a slow Stripe must not hold the pool
    invoice = await runtime.invoices.get(customer, reported_units=totals.reported_units)
    return UsageOut(
        customer_id=customer.stripe_customer_id,
        period=PeriodOut(start=totals.period.start, end=totals.period.end),
        units=totals.units,
        reported_units=totals.reported_units,
        pending_units=totals.pending_units,
        by_day=[DayOut(date=d, units=n) for d, n in totals.by_day],
        upcoming_invoice=UpcomingInvoiceOut(**invoice) if invoice is not None else None,
        warning=None
        if invoice is not None
        else "The upcoming invoice is unavailable right now; usage figures are current.",
    )
