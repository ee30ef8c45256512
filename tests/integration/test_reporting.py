"""Exactly-once reporting to Stripe Billing Meters, through the emulator and its faults."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import stripe
from sqlmodel import col, select

from meterapi.db import make_engine, make_sessionmaker
from meterapi.metering.claim import claim_unreported
from meterapi.metering.reporter import lease_due
from meterapi.models import Customer, ReportStatus, UsageReport, utcnow
from meterapi.stripe_emulator import EmulatorControl
from tests.integration.conftest import Billing, new_customer, record, statuses
from tests.integration.totals import stripe_total


async def test_usage_reaches_stripe_once(
    billing: Billing, stripe_sdk: stripe.StripeClient, emulator_control: EmulatorControl
) -> None:
    customer_id, cus = await new_customer(billing, stripe_sdk)
    await record(billing, customer_id, 25)
    reporter = billing.reporter()
    assert await reporter.flush(timeout_s=10) == 0
    assert await stripe_total(emulator_control, cus) == 25
    # Aggregated: one meter event per customer and minute, not one per request.
    events = await emulator_control.meter_events(customer=cus)
    assert 1 <= len(events["data"]) <= 2
    # Nothing left: a second flush sends nothing more.
    assert await reporter.flush(timeout_s=5) == 0
    assert await stripe_total(emulator_control, cus) == 25


FAULTS = [
    pytest.param({"kind": "error", "status": 500, "count": 3}, id="5xx"),
    pytest.param({"kind": "error", "status": 503, "count": 2}, id="503"),
    pytest.param({"kind": "rate_limit", "count": 3}, id="429"),
    pytest.param({"kind": "hang", "seconds": 1.5, "count": 1}, id="hang"),
    pytest.param({"kind": "hang", "seconds": 1.5, "count": 1, "apply": True}, id="hang-applied"),
    pytest.param({"kind": "lost_response", "count": 2}, id="applied-response-lost"),
    pytest.param({"kind": "latency", "seconds": 0.2, "count": 3}, id="latency"),
]


@pytest.mark.parametrize("fault", FAULTS)
async def test_exact_totals_under_faults(
    billing: Billing,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
    fault: dict[str, object],
) -> None:
    customer_id, cus = await new_customer(billing, stripe_sdk)
    reporter = billing.reporter()
    await emulator_control.inject_fault(path="/v1/billing/meter_events", **fault)  # type: ignore[arg-type]
    for batch in (7, 11, 5):
        await record(billing, customer_id, batch)
        await reporter.run_cycle(now=utcnow() + timedelta(minutes=10))  # past any backoff
    assert await reporter.flush(timeout_s=20) == 0
    assert await stripe_total(emulator_control, cus) == 23
    assert set(await statuses(billing)) == {ReportStatus.SENT}
    if fault["kind"] != "latency":  # the fault really was met, and survived
        assert billing.metrics.reports_failed.value() >= 1


async def test_a_refused_event_is_parked_with_its_reason(
    billing: Billing, emulator_control: EmulatorControl
) -> None:
    async with billing.sessionmaker() as session:
        ghost = Customer(stripe_customer_id="cus_not_in_stripe", subscription_status="active")
        session.add(ghost)
        await session.commit()
        assert ghost.id is not None
    await record(billing, ghost.id, 3)
    await billing.reporter().flush(timeout_s=5)
    async with billing.sessionmaker() as session:
        report = (await session.exec(select(UsageReport))).one()
    assert report.status == ReportStatus.PARKED
    assert report.last_error and "InvalidRequestError" in report.last_error
    assert billing.metrics.reports_parked.value() == 1


async def test_an_old_attempted_report_is_not_resent_blindly(
    billing: Billing, stripe_sdk: stripe.StripeClient, emulator_control: EmulatorControl
) -> None:
    customer_id, cus = await new_customer(billing, stripe_sdk)
    await record(billing, customer_id, 4)
    reporter = billing.reporter()
    day_later = utcnow() + timedelta(hours=21)
    async with billing.sessionmaker() as session:
        # A send was attempted (a lease taken) and its outcome never recorded: a crash.
        await claim_unreported(session, event_name="api_requests", now=utcnow())
        await session.commit()
    async with billing.sessionmaker() as session:
        assert len(await lease_due(session, now=utcnow())) == 1
        await session.commit()
    await reporter.run_cycle(now=day_later)
    async with billing.sessionmaker() as session:
        report = (await session.exec(select(UsageReport))).one()
    assert report.status == ReportStatus.PARKED
    assert report.last_error and "reconcile" in report.last_error
    assert await stripe_total(emulator_control, cus) == 0


async def test_a_crash_between_send_and_settle_does_not_double_bill(
    billing: Billing, stripe_sdk: stripe.StripeClient, emulator_control: EmulatorControl
) -> None:
    customer_id, cus = await new_customer(billing, stripe_sdk)
    await record(billing, customer_id, 9)
    reporter = billing.reporter()
    async with billing.sessionmaker() as session:
        await claim_unreported(session, event_name="api_requests", now=utcnow())
        await session.commit()
    async with billing.sessionmaker() as session:
        (report,) = await lease_due(session, now=utcnow())
        await session.commit()
    # The process sends, Stripe records it, and the process dies before writing "sent".
    await billing.gateway.send_meter_event(
        identifier=report.identifier,
        stripe_customer_id=cus,
        value=report.value,
        timestamp=report.event_at,
    )
    # A restarted reporter retries once the lease has run out.
    await reporter.run_cycle(now=utcnow() + timedelta(minutes=5))
    assert await stripe_total(emulator_control, cus) == 9
    assert set(await statuses(billing)) == {ReportStatus.SENT}


@pytest.mark.postgres_only
async def test_two_reporters_at_once_send_each_unit_once(
    billing: Billing,
    db_url: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    customers = [await new_customer(billing, stripe_sdk) for _ in range(3)]
    other_engine = make_engine(db_url)
    try:
        first, second = billing.reporter(), billing.reporter(make_sessionmaker(other_engine))
        for _ in range(5):
            await asyncio.gather(*(record(billing, cid, 20) for cid, _ in customers))
            await asyncio.gather(first.run_cycle(), second.run_cycle())
        await asyncio.gather(first.flush(timeout_s=10), second.flush(timeout_s=10))
    finally:
        await other_engine.dispose()
    for _, cus in customers:
        assert await stripe_total(emulator_control, cus) == 100
    assert set(await statuses(billing)) == {ReportStatus.SENT}
    async with billing.sessionmaker() as session:
        unsent = (
            await session.exec(
                select(UsageReport).where(col(UsageReport.status) != ReportStatus.SENT)
            )
        ).all()
    assert unsent == []


async def test_a_backlog_larger_than_one_claim_is_sent_in_one_cycle(
    billing: Billing, stripe_sdk: stripe.StripeClient, emulator_control: EmulatorControl
) -> None:
    from sqlalchemy import insert

    from meterapi.metering.claim import CLAIM_BATCH
    from meterapi.models import UsageEvent

    customer_id, cus = await new_customer(billing, stripe_sdk)
    backlog = CLAIM_BATCH * 2 + 7
    now = utcnow()
    async with billing.sessionmaker() as session:
        rows = [
            {"customer_id": customer_id, "api_key_id": "k", "route": "/r", "units": 1,
             "occurred_at": now}
            for _ in range(backlog)
        ]  # fmt: skip
        await session.exec(insert(UsageEvent), params=rows)
        await session.commit()
    result = await billing.reporter().run_cycle()
    assert result.claimed_rows == backlog
    assert await stripe_total(emulator_control, cus) == backlog
