"""The operator's view of customers: who they are, whether they may call, what they used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.errors import NotFound
from meterapi.keys import access_policy
from meterapi.keys.service import find_customer
from meterapi.metering.usage import usage_totals
from meterapi.models import ApiKey, Customer


@dataclass(frozen=True)
class Account:
    customer: Customer
    allowed: bool
    units_this_period: int
    active_keys: int


async def list_accounts(
    session: AsyncSession,
    *,
    limit: int,
    starting_after: str | None,
    grace_s: int,
    now: datetime,
) -> tuple[list[Account], bool]:
    """Customers in the order they were created, after the one ``starting_after`` names (a
    Stripe customer id; ``NotFound`` if unknown); and whether more follow."""
    query = select(Customer)
    if starting_after is not None:
        after = await find_customer(session, stripe_customer_id=starting_after)
        query = query.where(col(Customer.id) > after.id)
    rows = list((await session.exec(query.order_by(col(Customer.id)).limit(limit + 1))).all())
    page = rows[:limit]
    counts = await _active_keys(session, [c.id for c in page if c.id is not None], now=now)
    accounts = [
        Account(
            customer=c,
            allowed=access_policy.allows(c, now, grace_s),
            units_this_period=(await usage_totals(session, customer=c, now=now)).units,
            active_keys=counts.get(c.id or 0, 0),
        )
        for c in page
    ]
    return accounts, len(rows) > limit


async def account(
    session: AsyncSession, *, stripe_customer_id: str, grace_s: int, now: datetime
) -> Account:
    customer = await find_customer(session, stripe_customer_id=stripe_customer_id)
    if customer.id is None:  # pragma: no cover - a stored row has an id
        raise NotFound()
    counts = await _active_keys(session, [customer.id], now=now)
    return Account(
        customer=customer,
        allowed=access_policy.allows(customer, now, grace_s),
        units_this_period=(await usage_totals(session, customer=customer, now=now)).units,
        active_keys=counts.get(customer.id, 0),
    )


async def _active_keys(session: AsyncSession, ids: list[int], *, now: datetime) -> dict[int, int]:
    if not ids:
        return {}
    rows = await session.exec(
        select(ApiKey.customer_id, func.count())
        .where(
            col(ApiKey.customer_id).in_(ids),
            col(ApiKey.revoked_at).is_(None),
            (col(ApiKey.expires_at).is_(None)) | (col(ApiKey.expires_at) > now),
        )
        .group_by(col(ApiKey.customer_id))
    )
    return {customer_id: int(n) for customer_id, n in rows.all()}
