"""``SpendGuard`` against the real ledger and the emulator's price (0.5 minor units a unit):
where it reads, where it does not, and what it decides."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import stripe
from sqlalchemy import event

from meterapi.billing.gateway import StripeGateway
from meterapi.errors import SpendCapReached
from meterapi.metering.spend import RATE_WINDOW_S, SpendGuard
from meterapi.models import Customer, utcnow
from tests.conftest import make_settings
from tests.integration.billing_support import NO_STRIPE
from tests.integration.conftest import Billing, new_customer, record


@contextmanager
def reads(billing: Billing) -> Iterator[list[str]]:
    """The statements the guard's engine runs while the block does."""
    engine = billing.sessionmaker.kw["bind"].sync_engine
    seen: list[str] = []

    def log(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", log)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", log)


@pytest.fixture
async def guard(billing: Billing, stripe_price: str) -> SpendGuard:
    guard = SpendGuard(billing.sessionmaker, billing.gateway, stripe_price, refresh_s=3600)
    assert await guard.load_price()
    return guard


async def used(billing: Billing, guard: SpendGuard, customer: int, units: int) -> None:
    """What the usage layer does: commit to the ledger, then tell the guard."""
    await record(billing, customer, units)
    guard.record(customer, units)


async def test_near_the_cap_each_check_reads_the_ledger(
    billing: Billing, guard: SpendGuard, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await new_customer(billing, stripe_sdk)
    # 10 minor units at 0.5: the 19th unit makes 9.5, which rounds to 10.
    await record(billing, customer, 18)  # by another process: this one was not told
    await guard.check(customer, 10)
    await record(billing, customer, 1)
    with pytest.raises(SpendCapReached):
        await guard.check(customer, 10)
    await guard.check(customer, 11)  # a higher cap: 21 units
    await guard.check(customer, None)


async def test_far_from_the_cap_no_read_then_exact_near_it(
    billing: Billing, guard: SpendGuard, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await new_customer(billing, stripe_sdk)
    cap = 1000  # 1999 units; near = the last 399
    await used(billing, guard, customer, 1000)
    await guard.check(customer, cap)  # the first look reads
    await asyncio.sleep(RATE_WINDOW_S)
    await guard.check(customer, cap)  # and reads again until it knows the customer's rate
    await record(billing, customer, 300)  # by another process, unseen here
    with reads(billing) as statements:
        for _ in range(50):
            await guard.check(customer, cap)
        assert statements == []
        await used(billing, guard, customer, 600)  # its own units bring it within the margin
        await guard.check(customer, cap)  # so it reads: 1900 in the ledger, admitted
        assert statements != []
    await used(billing, guard, customer, 99)  # 1999
    with pytest.raises(SpendCapReached):
        await guard.check(customer, cap)
    with reads(billing) as statements:
        with pytest.raises(SpendCapReached):
            await guard.check(customer, cap)  # refused from the tally
        assert statements == []
        await guard.check(customer, 2000)  # a higher cap: admitted at once, still no read
        assert statements == []


async def test_a_new_period_gives_access_back(
    billing: Billing, stripe_price: str, stripe_sdk: stripe.StripeClient
) -> None:
    guard = SpendGuard(billing.sessionmaker, billing.gateway, stripe_price, refresh_s=0.0)
    assert await guard.load_price()
    customer, _ = await new_customer(billing, stripe_sdk)
    now = utcnow()
    await _set_period(billing, customer, now - timedelta(days=1), now + timedelta(days=29))
    await used(billing, guard, customer, 20)
    with pytest.raises(SpendCapReached):
        await guard.check(customer, 10)
    # Stripe's webhook moves the period: the units above are in the last one.
    await _set_period(billing, customer, utcnow(), utcnow() + timedelta(days=30))
    await guard.check(customer, 10)


async def test_no_cap_and_a_cap_of_zero(
    billing: Billing, guard: SpendGuard, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await new_customer(billing, stripe_sdk)
    await used(billing, guard, customer, 5)
    await guard.check(customer, None)
    with pytest.raises(SpendCapReached):
        await guard.check(customer, 0)  # a cap of 0 is reached at once


async def _set_period(billing: Billing, customer_id: int, start: Any, end: Any) -> None:
    async with billing.sessionmaker() as session:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        customer.current_period_start, customer.current_period_end = start, end
        session.add(customer)
        await session.commit()


async def test_a_price_stripe_cannot_give_leaves_the_cap_unenforced(
    db_url: str, billing: Billing, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await new_customer(billing, stripe_sdk)
    nowhere = StripeGateway(make_settings(db_url, stripe_api_base=NO_STRIPE, stripe_timeout_s=0.5))
    try:
        guard = SpendGuard(billing.sessionmaker, nowhere, "price_unreadable")
        assert not await guard.load_price()
        await used(billing, guard, customer, 30)
        await guard.check(customer, 10)  # fails open: the spend cannot be priced
    finally:
        await nowhere.close()
