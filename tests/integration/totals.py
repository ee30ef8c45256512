"""What was billed, counted on both sides: the usage ledger in our database, and Stripe's meter
events (through the emulator's control API). Every money test compares these two."""

from __future__ import annotations

from sqlmodel import func, select

from meterapi.db import make_engine, make_sessionmaker
from meterapi.models import UsageEvent
from meterapi.stripe_emulator import EmulatorControl


async def ledger_total(db_url: str) -> int:
    """Units in the ledger, read through a connection of the test's own."""
    engine = make_engine(db_url)
    try:
        async with make_sessionmaker(engine)() as session:
            total = await session.scalar(select(func.coalesce(func.sum(UsageEvent.units), 0)))
    finally:
        await engine.dispose()
    return int(total or 0)


async def stripe_total(control: EmulatorControl, stripe_customer_id: str) -> int:
    """Units Stripe holds for a customer; fails if it accepted any identifier twice."""
    events = (await control.meter_events(customer=stripe_customer_id))["data"]
    identifiers = [e["identifier"] for e in events]
    assert len(identifiers) == len(set(identifiers)), "an identifier was accepted twice"
    return int(sum(float(e["value"]) for e in events))
