"""Any interleaving of requests, Stripe faults, crashes and restarts bills each unit once."""

from __future__ import annotations

from datetime import timedelta

import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterapi.metering.reporter import lease_due
from meterapi.models import utcnow
from meterapi.stripe_emulator import EmulatorControl
from tests.conftest import IN_CI
from tests.integration.conftest import Billing, new_customer, record
from tests.integration.totals import stripe_total

FAULTS = st.sampled_from(
    [
        {"kind": "error", "status": 500},
        {"kind": "error", "status": 502},
        {"kind": "rate_limit"},
        {"kind": "lost_response"},
        {"kind": "hang", "seconds": 0.7},
        {"kind": "hang", "seconds": 0.7, "apply": True},
    ]
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(1, 12)),
        st.tuples(st.just("fault"), FAULTS),
        st.tuples(st.just("cycle"), st.none()),
        st.tuples(st.just("cycle"), st.none()),
        st.tuples(st.just("crash"), st.booleans()),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=3,
    max_size=16,
)


@settings(
    max_examples=25,
    derandomize=IN_CI,  # CI replays a fixed sample; local runs explore
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
async def test_any_interleaving_bills_each_unit_once(
    billing: Billing,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
    steps: list[tuple[str, object]],
) -> None:
    customer_id, cus = await new_customer(billing, stripe_sdk)  # each example its own customer
    clock = utcnow()
    reporter = billing.reporter()
    recorded = 0
    try:
        for action, arg in steps:
            if action == "record":
                assert isinstance(arg, int)
                await record(billing, customer_id, arg)
                recorded += arg
            elif action == "fault":
                assert isinstance(arg, dict)
                await emulator_control.inject_fault(path="/v1/billing/meter_events", **arg)
            elif action == "cycle":
                clock += timedelta(minutes=10)  # past any lease and backoff
                await reporter.run_cycle(now=clock)
            elif action == "crash":
                # A process leases due reports, maybe sends them, and dies before settling.
                async with billing.sessionmaker() as session:
                    leased = await lease_due(session, now=clock)
                    await session.commit()
                if arg:
                    for report in leased:
                        await billing.gateway.send_meter_event(
                            identifier=report.identifier,
                            stripe_customer_id=report.stripe_customer_id,
                            value=report.value,
                            timestamp=report.event_at,
                        )
            else:
                reporter = billing.reporter()
    finally:
        await emulator_control.clear_faults()
    for _ in range(3):
        clock += timedelta(minutes=10)
        await reporter.run_cycle(now=clock)
    assert await stripe_total(emulator_control, cus) == recorded
