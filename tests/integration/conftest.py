"""Shared fixtures for integration tests: a ledger and reporter wired to the Stripe emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import stripe
from sqlmodel import select

from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker
from meterapi.metering.ledger import UsageRecorder
from meterapi.metering.reporter import Reporter
from meterapi.metrics import Metrics
from meterapi.models import Customer, UsageReport
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.gateway_support import Payer, paying_customer
from tests.integration.keys_support import Seeder
from tests.integration.servers import service_env
from tests.integration.totals import ledger_total, stripe_total


@pytest.fixture
def seed(sessionmaker: Sessionmaker, settings: Settings) -> Seeder:
    """Customers and keys for the apps a test runs (they share its database and key pepper)."""
    return Seeder(sessionmaker, settings.pepper_bytes())


@dataclass
class Stack:
    """The suite's database and Stripe emulator (with the metered price), for tests that run the
    service and the ``meterapi`` command as real processes."""

    db_url: str
    emulator: EmulatorServer
    price: str
    sdk: stripe.StripeClient
    control: EmulatorControl

    def env(self, **extra: str) -> dict[str, str]:
        """The METERAPI_ settings of a process wired to this database and emulator."""
        return service_env(self.db_url, self.emulator, self.price, **extra)

    async def payer(self, *, email: str = "payer@example.com", pepper: str | None = None) -> Payer:
        return await paying_customer(self.db_url, self.sdk, email=email, pepper=pepper)

    async def ledger_total(self) -> int:
        return await ledger_total(self.db_url)

    async def stripe_total(self, stripe_customer_id: str) -> int:
        return await stripe_total(self.control, stripe_customer_id)


@pytest.fixture
def stack(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> Stack:
    return Stack(db_url, stripe_emulator, stripe_price, stripe_sdk, emulator_control)


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


async def statuses(billing: Billing) -> dict[str, int]:
    async with billing.sessionmaker() as session:
        reports = (await session.exec(select(UsageReport))).all()
    found: dict[str, int] = {}
    for report in reports:
        found[report.status] = found.get(report.status, 0) + 1
    return found
