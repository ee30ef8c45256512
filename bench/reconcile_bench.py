"""How long reconciliation takes for many customers, against the emulator in its own process.

Seeds the database directly: N customers (also created in the emulator), each with usage
reported to Stripe (a sent report, and the same meter event in the emulator) and some usage
not yet reported; then times ``Reconciler.run()`` (one event-summaries read per customer,
10 at a time) and ``meterapi usage reconcile`` as a command, with no drift and with drift
injected for a few customers (whose second look waits ``RECHECK_DELAY_S``).

    .venv/bin/python -m bench.reconcile_bench [--customers 1000] [--database-url URL] [--port 18411]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import stripe

from meterapi import migrations
from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.metering.reconcile import Reconciler
from meterapi.models import Customer, ReportStatus, UsageEvent, UsageReport, utcnow

DRIFTING = 10


def _settings(database_url: str, api_base: str) -> Settings:
    return Settings(_env_file=None, database_url=database_url, stripe_api_base=api_base)  # type: ignore[call-arg]


async def _seed(settings: Settings, customers: int) -> list[str]:
    gateway = StripeGateway(settings)
    await gateway.ensure_metered_price()
    await gateway.close()
    sdk = stripe.StripeClient(
        "sk_test_bench",
        http_client=stripe.HTTPXClient(),
        base_addresses={"api": settings.stripe_api_base, "meter_events": settings.stripe_api_base},
    )
    limit = asyncio.Semaphore(20)
    now = utcnow()

    async def one(i: int) -> str:
        async with limit:
            created = await sdk.v1.customers.create_async(params={"email": f"b{i}@example.com"})
            await sdk.v1.billing.meter_events.create_async(
                params={
                    "event_name": "api_requests",
                    "identifier": f"bench-{created.id}",
                    "payload": {"stripe_customer_id": created.id, "value": str(10 + i % 7)},
                }
            )
            return created.id

    ids = list(await asyncio.gather(*(one(i) for i in range(customers))))
    engine = make_engine(settings.database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            rows = [Customer(stripe_customer_id=c, subscription_status="active") for c in ids]
            session.add_all(rows)
            await session.flush()
            for i, customer in enumerate(rows):
                assert customer.id is not None
                session.add(
                    UsageReport(
                        identifier=f"bench-{customer.stripe_customer_id}",
                        customer_id=customer.id,
                        stripe_customer_id=customer.stripe_customer_id,
                        event_name="api_requests",
                        value=10 + i % 7,
                        event_at=now,
                        status=ReportStatus.SENT,
                        sent_at=now,
                    )
                )
                session.add(
                    UsageEvent(
                        customer_id=customer.id,
                        api_key_id="k",
                        route="/v1/data",
                        units=3,
                        occurred_at=now,
                    )
                )
    finally:
        await engine.dispose()
    return ids


async def _time_reconcile(settings: Settings) -> tuple[float, int, int]:
    engine = make_engine(settings.database_url)
    gateway = StripeGateway(settings)
    try:
        started = time.perf_counter()
        rows = await Reconciler(make_sessionmaker(engine), gateway).run()
        elapsed = time.perf_counter() - started
    finally:
        await gateway.close()
        await engine.dispose()
    return elapsed, len(rows), sum(1 for r in rows if r.drift)


async def _time_ledger(settings: Settings) -> float:
    """The database's share: the ledger figures of every customer, one after another."""
    from sqlmodel import col, select

    from meterapi.metering.reconcile import ledger_units, minute_window

    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            ids = (await session.exec(select(col(Customer.id)))).all()
            now = utcnow()
            window = minute_window(now.replace(day=1, hour=0, minute=0), now)
            started = time.perf_counter()
            for customer_id in ids:
                assert customer_id is not None
                await ledger_units(session, customer_id=customer_id, window=window)
            return time.perf_counter() - started
    finally:
        await engine.dispose()


def _time_command(settings: Settings) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERAPI_")}
    env |= {
        "METERAPI_DATABASE_URL": settings.database_url,
        "METERAPI_STRIPE_API_BASE": settings.stripe_api_base,
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meterapi.cli", "usage", "reconcile", "--drift-only"],
        env=env,
        capture_output=True,
        check=False,
    )
    if done.returncode not in (0, 1) or b"reconciled" not in done.stdout:
        print(done.stderr.decode()[-1000:])
    return time.perf_counter() - started, done.returncode


async def _inject_drift(api_base: str, ids: list[str]) -> None:
    sdk = stripe.StripeClient(
        "sk_test_bench",
        http_client=stripe.HTTPXClient(),
        base_addresses={"api": api_base, "meter_events": api_base},
    )
    for cus in ids[:DRIFTING]:
        await sdk.v1.billing.meter_events.create_async(
            params={
                "event_name": "api_requests",
                "identifier": f"drift-{cus}",
                "payload": {"stripe_customer_id": cus, "value": "1"},
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--port", type=int, default=18411)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="meterapi-reconcile-bench-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    migrations.upgrade(database_url)
    api_base = f"http://127.0.0.1:{args.port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "bench.emulator", "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{api_base}/_emulator/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        settings = _settings(database_url, api_base)
        started = time.perf_counter()
        ids = asyncio.run(_seed(settings, args.customers))
        print(f"seeded {len(ids)} customers in {time.perf_counter() - started:.1f} s")
        for label in ("no drift", "no drift, again"):
            elapsed, rows, drifting = asyncio.run(_time_reconcile(settings))
            print(
                f"Reconciler.run, {label}: {rows} customers in {elapsed:.2f} s "
                f"({drifting} drifting)"
            )
        print(f"ledger reads alone: {asyncio.run(_time_ledger(settings)):.2f} s")
        elapsed, code = _time_command(settings)
        print(f"meterapi usage reconcile, no drift: {elapsed:.2f} s, exit {code}")
        asyncio.run(_inject_drift(api_base, ids))
        elapsed, rows, drifting = asyncio.run(_time_reconcile(settings))
        print(
            f"Reconciler.run, {DRIFTING} drifting: {rows} customers in {elapsed:.2f} s "
            f"({drifting} drifting)"
        )
        elapsed, code = _time_command(settings)
        print(f"meterapi usage reconcile, {DRIFTING} drifting: {elapsed:.2f} s, exit {code}")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


if __name__ == "__main__":
    main()
