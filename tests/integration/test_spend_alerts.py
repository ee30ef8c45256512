"""Threshold alerts: once per threshold and period, with their outbox events, whoever looks."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

import stripe
from sqlmodel import col, select

from meterapi.metering.alerts import ThresholdAlerts, fire_due, fired_thresholds, reached
from meterapi.metering.limits import Pricing, set_limits
from meterapi.metering.spend import SpendGuard
from meterapi.models import Customer, OutboundEvent, SpendAlert, utcnow
from tests.integration.conftest import Billing, new_customer, record

CAP = 100  # minor units: 200 units at 0.5


async def capped_customer(billing: Billing, sdk: stripe.StripeClient) -> tuple[int, str]:
    customer, stripe_id = await new_customer(billing, sdk)
    async with billing.sessionmaker() as session:
        await set_limits(session, customer_id=customer, monthly_spend_cap=CAP)
        await session.commit()
    return customer, stripe_id


def alerts(billing: Billing, stripe_price: str) -> ThresholdAlerts:
    """One process's alerts (a new one: as after a restart)."""
    pricing = Pricing(billing.gateway, stripe_price)
    guard = SpendGuard(billing.sessionmaker, billing.gateway, stripe_price)
    return ThresholdAlerts(billing.sessionmaker, pricing, guard)


async def events(billing: Billing) -> list[dict[str, object]]:
    async with billing.sessionmaker() as session:
        rows = await session.exec(select(OutboundEvent).order_by(col(OutboundEvent.id)))
        return [json.loads(row.payload) for row in rows.all()]


async def test_each_threshold_fires_once_with_its_event(
    billing: Billing, stripe_price: str, stripe_sdk: stripe.StripeClient
) -> None:
    customer, stripe_id = await capped_customer(billing, stripe_sdk)
    process = alerts(billing, stripe_price)
    await record(billing, customer, 99)  # 49.5 → 50: half the cap
    await process.evaluate({customer})
    await record(billing, customer, 100)  # 99.5 → 100: 80 % and 100 % at once
    await process.evaluate({customer})
    await process.evaluate({customer})
    await alerts(billing, stripe_price).evaluate({customer})  # after a restart
    await record(billing, customer, 50)  # past the cap: nothing more to fire
    await alerts(billing, stripe_price).evaluate({customer})

    sent = await events(billing)
    assert [e["type"] for e in sent] == ["usage.threshold_reached"] * 3
    assert [e["data"] for e in sent] == [
        {
            "customer_id": stripe_id,
            "threshold_percent": threshold,
            "spent": {"amount": spent, "currency": "usd"},
            "cap": {"amount": CAP, "currency": "usd"},
        }
        for threshold, spent in ((50, 50), (80, 100), (100, 100))
    ]
    async with billing.sessionmaker() as session:
        found = await session.get(Customer, customer)
        assert found is not None
        assert await fired_thresholds(session, customer=found) == [50, 80, 100]


async def test_processes_looking_at_once_fire_once(
    billing: Billing, stripe_price: str, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await capped_customer(billing, stripe_sdk)
    await record(billing, customer, 200)
    processes = [alerts(billing, stripe_price) for _ in range(4)]
    for _ in range(3):
        await asyncio.gather(*(p.evaluate({customer}) for p in processes))
    assert len(await events(billing)) == 3
    async with billing.sessionmaker() as session:
        rows = (await session.exec(select(SpendAlert))).all()
    assert sorted(r.threshold_percent for r in rows) == [50, 80, 100]


async def test_a_new_period_fires_again_and_the_banner_clears(
    billing: Billing, stripe_price: str, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await capped_customer(billing, stripe_sdk)
    pricing = Pricing(billing.gateway, stripe_price)
    await _set_period(billing, customer, start=utcnow() - timedelta(days=1))
    await record(billing, customer, 120)
    async with billing.sessionmaker() as session:
        assert await fire_due(session, customer_id=customer, pricing=pricing) == [50]
        await session.commit()
    # Stripe's webhook starts the next period: the banner is empty until it fires again.
    found = await _set_period(billing, customer, start=utcnow())
    async with billing.sessionmaker() as session:
        assert await fired_thresholds(session, customer=found) == []
        assert await fire_due(session, customer_id=customer, pricing=pricing) == []
    await record(billing, customer, 120)
    async with billing.sessionmaker() as session:
        assert await fire_due(session, customer_id=customer, pricing=pricing) == [50]
        await session.commit()
        assert await fired_thresholds(session, customer=found) == [50]


async def _set_period(billing: Billing, customer_id: int, *, start: datetime) -> Customer:
    async with billing.sessionmaker() as session:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        customer.current_period_start = start
        customer.current_period_end = start + timedelta(days=30)
        session.add(customer)
        await session.commit()
        await session.refresh(customer)
        return customer


async def test_no_cap_or_a_cap_of_zero_fires_nothing(
    billing: Billing, stripe_price: str, stripe_sdk: stripe.StripeClient
) -> None:
    customer, _ = await new_customer(billing, stripe_sdk)
    await record(billing, customer, 10)
    await alerts(billing, stripe_price).evaluate({customer})
    async with billing.sessionmaker() as session:
        await set_limits(session, customer_id=customer, monthly_spend_cap=0)
        await session.commit()
    await alerts(billing, stripe_price).evaluate({customer})
    assert await events(billing) == []
    assert reached(0, 0) == [] and reached(50, 100) == [50] and reached(99, 100) == [50, 80]
