"""The operator API's customers (CONTRACT §8): list, detail, limits, keys.

Mounted only when ``METERAPI_ADMIN_TOKEN`` is set; every route needs that token as a bearer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.api.bodies import RequestBody
from meterapi.api.customer_limits import LimitsOut, SpendCapIn, price_known, read_limits
from meterapi.api.deps import ADMIN_DEPENDENCIES, KeyGuardDep, RuntimeDep, SessionDep
from meterapi.api.keys import KeyIdPath, KeyPublic, revoke_everywhere
from meterapi.api.responses import ADMIN_REFUSED, Descriptions, Page, responses
from meterapi.api.usage import UsageOut, usage_of
from meterapi.keys import service as key_service
from meterapi.metering import accounts, alerts, limits
from meterapi.metering.accounts import Account
from meterapi.models import Customer, utcnow
from meterapi.runtime import Runtime


def operator_router() -> APIRouter:
    """A router of the operator API: under ``/admin/v1``, every route behind the operator token
    and documented as refusing a wrong one."""
    return APIRouter(
        prefix="/admin/v1",
        tags=["admin"],
        dependencies=ADMIN_DEPENDENCIES,
        responses=responses(ADMIN_REFUSED),
    )


router = operator_router()

_NO_CUSTOMER: Descriptions = {404: "No such customer"}

# Stripe ids are opaque (up to 255 characters); no control characters (PostgreSQL refuses NUL).
StripeId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
CustomerPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The customer's Stripe id (cus_…).",
    ),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]


class CustomerSummary(BaseModel):
    customer_id: str
    email: str | None
    subscription_status: str | None
    access: Literal["allowed", "denied"]
    units_this_period: int
    active_keys: int
    created_at: datetime

    @classmethod
    def of(cls, account: Account) -> CustomerSummary:
        customer = account.customer
        return cls(
            customer_id=customer.stripe_customer_id,
            email=customer.email,
            subscription_status=customer.subscription_status,
            access="allowed" if account.allowed else "denied",
            units_this_period=account.units_this_period,
            active_keys=account.active_keys,
            created_at=customer.created_at,
        )


class CustomerList(Page[CustomerSummary]):
    pass


class OperatorLimitsOut(LimitsOut):
    """As ``GET /v1/limits`` shows them, and whether the rate limit is this customer's own."""

    rate_limit_overridden: bool


class CustomerDetail(CustomerSummary):
    keys: list[KeyPublic]
    usage: UsageOut
    limits: OperatorLimitsOut


class LimitsUpdate(RequestBody):
    """Omit a field to leave it as is.

    ``rate_limit``: a rate, null for none at all, or ``"default"`` for ``METERAPI_RATE_LIMIT``.
    ``monthly_spend_cap``: an amount, or null for none.
    """

    rate_limit: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^(default|[1-9][0-9]{0,8}/(second|minute|hour|day))$",
        examples=["50/second", "6000/minute", None, "default"],
    )
    monthly_spend_cap: SpendCapIn | None = None


async def limits_of(
    customer: Customer, *, session: AsyncSession, runtime: Runtime, priced: bool
) -> OperatorLimitsOut:
    found, spent = await read_limits(customer, session=session, runtime=runtime, priced=priced)
    return OperatorLimitsOut.of(found, spent, rate_limit_overridden=found.rate_limit_overridden)


@router.get(
    "/customers",
    response_model=CustomerList,
    summary="Customers in the order they joined: status, access, usage this period, keys",
    responses=responses({404: "starting_after names no customer"}),
)
async def list_customers(
    session: SessionDep,
    runtime: RuntimeDep,
    limit: Limit = 20,
    starting_after: Annotated[
        StripeId | None, Query(description="The customer_id the previous page ended with.")
    ] = None,
) -> CustomerList:
    page, has_more = await accounts.list_accounts(
        session,
        limit=limit,
        starting_after=starting_after,
        grace_s=runtime.settings.past_due_grace_s,
        now=utcnow(),
    )
    return CustomerList(data=[CustomerSummary.of(a) for a in page], has_more=has_more)


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerDetail,
    summary="One customer with their keys, usage (as GET /v1/usage) and limits",
    responses=responses(_NO_CUSTOMER),
)
async def get_customer(
    customer_id: CustomerPath, session: SessionDep, runtime: RuntimeDep
) -> CustomerDetail:
    priced = await price_known(runtime)  # before the session holds a connection
    found = await accounts.account(
        session,
        stripe_customer_id=customer_id,
        grace_s=runtime.settings.past_due_grace_s,
        now=utcnow(),
    )
    customer = found.customer
    assert customer.id is not None
    keys = [
        KeyPublic.model_validate(k)
        for k in await key_service.list_keys(session, customer_id=customer.id)
    ]
    customer_limits = await limits_of(customer, session=session, runtime=runtime, priced=priced)
    usage = await usage_of(customer, session=session, runtime=runtime)
    return CustomerDetail(
        **CustomerSummary.of(found).model_dump(), keys=keys, usage=usage, limits=customer_limits
    )


@router.put(
    "/customers/{customer_id}/limits",
    response_model=OperatorLimitsOut,
    summary="Override a customer's rate limit and set or clear their monthly spend cap",
    responses=responses(_NO_CUSTOMER),
)
async def put_limits(
    customer_id: CustomerPath, body: LimitsUpdate, session: SessionDep, runtime: RuntimeDep
) -> OperatorLimitsOut:
    priced = await price_known(runtime)  # before the session holds a connection
    customer = await key_service.find_customer(session, stripe_customer_id=customer_id)
    assert customer.id is not None
    given = body.model_fields_set
    rate: limits.RateChange = limits.KEEP
    if "rate_limit" in given:
        rate = limits.DEFAULT if body.rate_limit == "default" else body.rate_limit
    cap: limits.CapChange = limits.KEEP
    if "monthly_spend_cap" in given:
        cap = body.monthly_spend_cap.amount if body.monthly_spend_cap is not None else None
    await alerts.change_limits(
        session,
        customer_id=customer.id,
        rate_limit=rate,
        monthly_spend_cap=cap,
        pricing=runtime.pricing if priced else None,
    )
    return await limits_of(customer, session=session, runtime=runtime, priced=priced)


@router.delete(
    "/customers/{customer_id}/keys/{key_id}",
    status_code=204,
    summary="Revoke a customer's key now, in every worker and replica",
    responses=responses(
        {
            404: "No such customer, or no such key of theirs",
            409: "The customer's only active key (send force=true to revoke it)",
        }
    ),
)
async def revoke_key(
    customer_id: CustomerPath,
    key_id: KeyIdPath,
    session: SessionDep,
    keys: KeyGuardDep,
    force: Annotated[bool, Query(description="Revoke even the only active key.")] = False,
) -> Response:
    customer = await key_service.find_customer(session, stripe_customer_id=customer_id)
    await revoke_everywhere(session, keys, key_id=key_id, customer_id=customer.id, allow_last=force)
    return Response(status_code=204)
