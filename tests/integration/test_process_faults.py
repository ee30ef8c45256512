"""A real service process killed during load: nothing that got a 2xx is lost, nothing doubled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import stripe
from sqlmodel import func, select

from meterapi.billing.gateway import StripeGateway
from meterapi.db import make_engine, make_sessionmaker
from meterapi.metering.reporter import Reporter
from meterapi.models import UsageEvent
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.gateway_support import paying_customer
from tests.integration.servers import ServiceProcess


async def seed(db_url: str, sdk: stripe.StripeClient) -> tuple[str, str]:
    """A Stripe customer with an active subscription in our database, and a key."""
    payer = await paying_customer(db_url, sdk, email="load@example.com")
    return payer.customer, payer.key


class Load:
    """Concurrent clients calling /v1/data until stopped; counts what each call got."""

    def __init__(self, url: str, key: str, *, clients: int = 8) -> None:
        self.url, self.key, self.clients = url, key, clients
        self.ok = 0
        self.failed = 0  # errors and non-2xx: some may have been recorded as they died
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    response = await client.get("/v1/data", headers={"X-API-Key": self.key})
                except httpx.HTTPError:
                    self.failed += 1
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 200:
                    self.ok += 1
                    self._progress.set()
                else:
                    self.failed += 1

    async def until_ok(self, count: int, *, within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s):
            while self.ok < count:
                self._progress.clear()
                await self._progress.wait()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def ledger_total(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        async with make_sessionmaker(engine)() as session:
            total = await session.scalar(select(func.coalesce(func.sum(UsageEvent.units), 0)))
    finally:
        await engine.dispose()
    return int(total or 0)


async def flush_all(db_url: str, emulator: EmulatorServer, price: str) -> None:
    settings = stripe_settings(db_url, emulator, price)
    engine = make_engine(db_url)
    gateway = StripeGateway(settings)
    try:
        reporter = Reporter(
            make_sessionmaker(engine), gateway, interval_s=1, event_name="api_requests"
        )
        assert await reporter.flush(timeout_s=30) == 0
    finally:
        await gateway.close()
        await engine.dispose()


def service_env(db_url: str, emulator: EmulatorServer, price: str) -> dict[str, str]:
    return {
        "METERAPI_DATABASE_URL": db_url,
        "METERAPI_STRIPE_API_BASE": emulator.url,
        "METERAPI_STRIPE_PRICE_ID": price,
        "METERAPI_REPORT_INTERVAL_S": "0.3",
    }


async def stripe_total(control: EmulatorControl, customer: str) -> int:
    events = (await control.meter_events(customer=customer))["data"]
    identifiers = [e["identifier"] for e in events]
    assert len(identifiers) == len(set(identifiers))
    return int(sum(float(e["value"]) for e in events))


async def test_sigkill_during_load_then_restart(
    db_url: str,
    tmp_path: Path,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    customer, key = await seed(db_url, stripe_sdk)
    env = service_env(db_url, stripe_emulator, stripe_price)
    service = ServiceProcess(env, log_path=tmp_path / "service.log")
    await asyncio.to_thread(service.start)
    load = Load(service.url, key)
    load.start()
    await load.until_ok(150)
    service.kill()  # mid-load: no shutdown, no flush
    await load.stop()
    ok_before, failed_before = load.ok, load.failed
    assert ok_before >= 150

    # Restarted on the same database: what was pending goes out, and new calls add to it.
    restarted = ServiceProcess(env, log_path=tmp_path / "service.log")
    restarted.port, restarted.url = service.port, service.url
    await asyncio.to_thread(restarted.start)
    load = Load(service.url, key, clients=4)
    load.start()
    await asyncio.sleep(0.5)
    await load.stop()
    assert await asyncio.to_thread(restarted.terminate)
    await flush_all(db_url, stripe_emulator, stripe_price)

    ok = ok_before + load.ok
    recorded = await ledger_total(db_url)
    # Every 2xx is in the ledger; beyond those, only calls cut off by the kill after their
    # usage was committed (their response was produced but never arrived).
    assert ok <= recorded <= ok + failed_before + load.failed
    assert await stripe_total(emulator_control, customer) == recorded


async def test_sigterm_flushes_before_exit(
    db_url: str,
    tmp_path: Path,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    customer, key = await seed(db_url, stripe_sdk)
    env = service_env(db_url, stripe_emulator, stripe_price)
    env["METERAPI_REPORT_INTERVAL_S"] = "3600"  # only the shutdown flush can send it
    service = ServiceProcess(env, log_path=tmp_path / "service.log")
    await asyncio.to_thread(service.start)
    load = Load(service.url, key, clients=4)
    load.start()
    await load.until_ok(60)
    await load.stop()
    assert await stripe_total(emulator_control, customer) == 0  # nothing sent yet
    assert await asyncio.to_thread(service.terminate)
    assert await ledger_total(db_url) == load.ok
    assert await stripe_total(emulator_control, customer) == load.ok
