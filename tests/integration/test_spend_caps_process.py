"""Spend caps through ``meterapi serve --workers 2``: the cap holds across workers with the
overshoot within the documented bound (docs/spend-caps.md), 402s are not billed, a higher cap
and a new period give access back, and each threshold alert fires once, across a restart."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import httpx
import stripe
from sqlmodel import col, select

from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.metering.limits import set_limits
from meterapi.metering.spend import REFRESH_S, cap_units, margin
from meterapi.models import Customer, OutboundEvent
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.integration.billing_support import customer_by_stripe_id
from tests.integration.gateway_support import paying_customer
from tests.integration.outbound_support import eventually
from tests.integration.servers import ServeCommand
from tests.integration.totals import ledger_total

CAP = 400  # minor units; at the emulator's 0.5 a unit, 799 units
CLIENTS = 8
PEPPER = "a-pepper-for-the-spend-cap-tests"
# Read from the code, so the test checks the figures the docs state.
LIMIT = cap_units(CAP, Decimal("0.5"))


class Customers:
    """The test's own view of the database."""

    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        self.sessionmaker = make_sessionmaker(self.engine)

    async def row(self, stripe_id: str) -> Customer | None:
        async with self.sessionmaker() as session:
            return await customer_by_stripe_id(session, stripe_id)

    async def set_cap(self, customer_id: int, cap: int | None) -> None:
        """What `meterapi limits set` and the limits routes do."""
        async with session_scope(self.sessionmaker) as session:
            await set_limits(session, customer_id=customer_id, monthly_spend_cap=cap)

    async def alerts(self) -> list[dict[str, object]]:
        async with self.sessionmaker() as session:
            query = select(OutboundEvent).where(OutboundEvent.type == "usage.threshold_reached")
            rows = (await session.exec(query.order_by(col(OutboundEvent.id)))).all()
        return [json.loads(row.payload)["data"] for row in rows]


async def until_refused(url: str, key: str) -> int:
    """One client calling until it is refused with 402; the calls it got a 200 for."""
    ok = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            response = await client.get("/v1/data", headers={"X-API-Key": key})
            if response.status_code == 402:
                assert response.json()["error"]["code"] == "spend_cap_reached"
                return ok
            assert response.status_code == 200, response.text
            ok += 1


async def statuses(url: str, key: str, calls: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return [
            (await client.get("/v1/data", headers={"X-API-Key": key})).status_code
            for _ in range(calls)
        ]


async def test_spend_cap_across_workers_raise_period_and_restart(
    db_url: str,
    tmp_path: Path,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    assert LIMIT == 799 and margin(LIMIT) == 159  # the load crosses the far and near zones
    payer = await paying_customer(db_url, stripe_sdk, email="capped@example.com", pepper=PEPPER)
    env = {
        "METERAPI_DATABASE_URL": db_url,
        "METERAPI_STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "METERAPI_STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
        "METERAPI_KEY_PEPPER": PEPPER,
        "METERAPI_STRIPE_API_BASE": stripe_emulator.url,
        "METERAPI_STRIPE_PRICE_ID": stripe_price,
        "METERAPI_REPORT_INTERVAL_S": "0.3",
    }
    db = Customers(db_url)
    service = ServeCommand(env, log_path=tmp_path / "serve.log", cwd=tmp_path, workers=2)
    await asyncio.to_thread(service.start)
    stripe_emulator.set_webhook(f"{service.url}/webhooks/stripe")
    try:
        # A subscription in Stripe, so that its period (and the next) reach us by webhook.
        subscription = await stripe_sdk.v1.subscriptions.create_async(
            params={"customer": payer.customer, "items": [{"price": stripe_price}]}
        )

        async def subscribed() -> bool:
            row = await db.row(payer.customer)
            return row is not None and row.current_period_start is not None

        await eventually(subscribed, within=20)
        customer = await db.row(payer.customer)
        assert customer is not None and customer.id is not None
        await db.set_cap(customer.id, CAP)

        # The cap holds across both workers; what passes it is what was in flight.
        clients = (until_refused(service.url, payer.key) for _ in range(CLIENTS))
        ok = sum(await asyncio.gather(*clients))
        billed = await ledger_total(db_url)
        print(f"spend cap: {LIMIT} units allowed, {billed} billed, overshoot {billed - LIMIT}")
        assert billed == ok  # every 200 recorded once, nothing else
        assert LIMIT <= billed <= LIMIT + CLIENTS

        # Refusals are not billed, in either worker, once each has read the ledger again (a
        # worker's last read is at most a refresh old: spend.REFRESH_S).
        await asyncio.sleep(REFRESH_S + 0.2)
        assert await statuses(service.url, payer.key, 30) == [402] * 30
        assert await ledger_total(db_url) == billed

        # 50 %, 80 % and 100 % of the cap, once each, with the spend when they were seen.
        async def alerted() -> bool:
            return len(await db.alerts()) == 3

        await eventually(alerted, within=20)
        alerts = await db.alerts()
        assert [a["threshold_percent"] for a in alerts] == [50, 80, 100]
        for alert in alerts:
            assert alert["customer_id"] == payer.customer
            assert alert["cap"] == {"amount": CAP, "currency": "usd"}
            spent = alert["spent"]
            assert isinstance(spent, dict) and spent["currency"] == "usd"
            assert spent["amount"] * 100 >= alert["threshold_percent"] * CAP  # type: ignore[operator]

        # A higher cap: back at once, in every worker.
        await db.set_cap(customer.id, CAP + 100)

        async def served() -> bool:
            return await statuses(service.url, payer.key, 1) == [200]

        await eventually(served, within=5)

        async def served_by_all() -> bool:  # both workers: 20 in a row
            return await statuses(service.url, payer.key, 20) == [200] * 20

        await eventually(served_by_all, within=10)
        await db.set_cap(customer.id, CAP)

        async def refused() -> bool:
            return await statuses(service.url, payer.key, 1) == [402]

        await eventually(refused, within=5)

        # A restart: still refused (the ledger seeds the totals), and no alert fires again.
        assert await asyncio.to_thread(service.terminate)
        await asyncio.to_thread(service.start)
        stripe_emulator.set_webhook(f"{service.url}/webhooks/stripe")
        assert await statuses(service.url, payer.key, 10) == [402] * 10
        await asyncio.sleep(3)  # the restarted workers' first look at every capped customer
        assert len(await db.alerts()) == 3

        # The next period: access comes back once Stripe's webhook has moved it.
        await emulator_control.close_period(subscription.id)
        await eventually(served, within=20)
        await eventually(served_by_all, within=10)  # the other worker: within a refresh
    finally:
        stripe_emulator.set_webhook(None)
        assert await asyncio.to_thread(service.terminate)
        await db.engine.dispose()
