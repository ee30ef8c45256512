"""Shared fixtures for integration tests: a ledger and reporter wired to the Stripe emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import stripe
from sqlmodel import select

from meterapi.billing.gateway import StripeGateway
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker
from meterapi.metering.ledger import UsageRecorder
from meterapi.metering.reporter import Reporter
from meterapi.metrics import Metrics
from meterapi.models import Customer, UsageReport
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings


@dataclass
class Billing:
    sessionmaker: Sessionmaker
    gateway: StripeGateway
    recorder: UsageRecorder
    metrics: Metrics

    def reporter(self, sessionmaker: Sessionmaker | None = None) -> Reporter:
        return Reporter(
            sessionmaker or self.sessionmaker,
            self.gateway,
            interval_s=0.05,
            event_name="api_requests",
            metrics=self.metrics,
        )


@pytest.fixture
async def billing(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> AsyncIterator[Billing]:
    settings = stripe_settings(db_url, stripe_emulator, stripe_price, stripe_timeout_s=0.5)
    engine = make_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    gateway = StripeGateway(settings)
    recorder = UsageRecorder(engine)
    recorder.start()
    yield Billing(sessionmaker, gateway, recorder, Metrics())
    await recorder.stop()
    await gateway.close()
    await engine.dispose()


async def new_customer(billing: Billing, sdk: stripe.StripeClient) -> tuple[int, str]:
    stripe_customer = await sdk.v1.customers.create_async(params={"email": "a@example.com"})
    async with billing.sessionmaker() as session:
        customer = Customer(stripe_customer_id=stripe_customer.id, subscription_status="active")
        session.add(customer)
        await session.commit()
        assert customer.id is not None
        return customer.id, stripe_customer.id


async def record(billing: Billing, customer_id: int, n: int) -> None:
    await asyncio.gather(
        *(
            billing.recorder.record(
                customer_id=customer_id, api_key_id="k", route="/v1/data", units=1
            )
            for _ in range(n)
        )
    )


async def stripe_total(control: EmulatorControl, stripe_customer_id: str) -> int:
    events = await control.meter_events(customer=stripe_customer_id)
    identifiers = [e["identifier"] for e in events["data"]]
    assert len(identifiers) == len(set(identifiers)), "an identifier was accepted twice"
    return int(sum(float(e["value"]) for e in events["data"]))


async def statuses(billing: Billing) -> dict[str, int]:
    async with billing.sessionmaker() as session:
        reports = (await session.exec(select(UsageReport))).all()
    found: dict[str, int] = {}
    for report in reports:
        found[report.status] = found.get(report.status, 0) + 1
    return found
