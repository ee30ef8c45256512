"""Property: any order and any duplication of a subscription's events ends in the state the
ordered stream ends in — and that state is Stripe's latest."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterapi.billing import webhooks
from meterapi.billing.gateway import StripeGateway
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker, session_scope
from tests.conftest import make_settings
from tests.integration.billing_support import (
    NO_STRIPE,
    PRICE,
    WEBHOOK_SECRET,
    customer_by_stripe_id,
    event,
    invoice,
    signed,
    subscription,
)

T0 = 1_800_000_000
MONTH = 2_592_000
STEPS = ["fail", "pay", "cancel_at_end", "keep", "pause", "resume", "renew", "delete"]
_runs = itertools.count()


@dataclass(frozen=True)
class Template:
    """One event of a lifecycle, before ids are given to it."""

    type: str
    created: int
    status: str = "active"
    period: int = 0
    cancel_at_end: bool = False


@st.composite
def lifecycles(draw: st.DrawFn) -> list[Template]:
    """A plausible, time-ordered lifecycle: Stripe's events as they were generated."""
    t = T0
    status, period, cancel_at_end = "active", 0, False
    stream = [Template("customer.subscription.created", t, status, period, cancel_at_end)]
    for step in draw(st.lists(st.sampled_from(STEPS), max_size=7)):
        t += draw(st.integers(min_value=1, max_value=3))
        updated = "customer.subscription.updated"
        if step == "fail" and status in ("active", "past_due"):
            stream.append(Template("invoice.payment_failed", t))
            status = "past_due"
        elif step == "pay" and status == "past_due":
            stream.append(Template("invoice.paid", t))
            status = "active"
        elif step == "cancel_at_end" and status == "active":
            cancel_at_end = not cancel_at_end
        elif step == "pause" and status == "active":
            status, updated = "paused", "customer.subscription.paused"
        elif step == "resume" and status == "paused":
            status, updated = "active", "customer.subscription.resumed"
        elif step == "renew" and status == "active":
            period += 1
            stream.append(Template("invoice.paid", t))
        elif step == "delete" and status != "canceled":
            status, updated = "canceled", "customer.subscription.deleted"
        elif step != "keep":
            continue
        stream.append(Template(updated, t, status, period, cancel_at_end))
        if status == "canceled":
            break
    return stream


def realise(stream: list[Template], run: int) -> list[dict[str, Any]]:
    """Stripe events for one run, with ids of its own so runs never share a customer."""
    sub_id, customer = f"sub_{run}", f"cus_{run}"
    events = []
    for index, item in enumerate(stream):
        if item.type.startswith("invoice."):
            obj = invoice(sub_id=sub_id, customer=customer)
        else:
            start = T0 + item.period * MONTH
            obj = subscription(
                sub_id=sub_id,
                customer=customer,
                status=item.status,
                period=(start, start + MONTH),
                cancel_at_period_end=item.cancel_at_end,
            )
        events.append(event(item.type, obj, created=item.created, event_id=f"evt_{run}_{index}"))
    return events


async def apply(sessionmaker: Sessionmaker, gateway: StripeGateway, events: list[Any]) -> None:
    for evt in events:
        body, headers = signed(evt)
        async with session_scope(sessionmaker) as session:
            receipt = await webhooks.receive(
                session,
                payload=body,
                signature=headers["Stripe-Signature"],
                gateway=gateway,
                price_id=PRICE,
            )
        assert receipt.outcome is not webhooks.Outcome.FAILED


async def state(sessionmaker: Sessionmaker, run: int) -> tuple[Any, ...]:
    async with sessionmaker() as session:
        customer = await customer_by_stripe_id(session, f"cus_{run}")
    assert customer is not None
    return (
        (customer.subscription_id or "").removeprefix(f"sub_{run}"),
        (customer.subscription_item_id or "").removeprefix(f"si_sub_{run}"),
        customer.subscription_status,
        customer.subscription_synced_at,
        customer.past_due_since,
        customer.current_period_start,
        customer.current_period_end,
        customer.cancel_at_period_end,
    )


def expected_past_due_since(stream: list[Template]) -> datetime | None:
    """The grace clock: the first failure since the subscription was last in good standing."""
    since: int | None = None
    for item in stream:
        good = item.type == "invoice.paid" or (
            item.type.startswith("customer.") and item.status in ("active", "trialing")
        )
        bad = item.type == "invoice.payment_failed" or (
            item.type.startswith("customer.") and item.status == "past_due"
        )
        if good:
            since = None
        elif bad and since is None:
            since = item.created
    return datetime.fromtimestamp(since, UTC) if since is not None else None


def test_any_order_and_duplication_ends_in_the_ordered_state(db_url: str) -> None:
    config = make_settings(db_url, stripe_api_base=NO_STRIPE, stripe_webhook_secret=WEBHOOK_SECRET)
    with asyncio.Runner() as runner:
        engine = make_engine(db_url)
        sessionmaker = make_sessionmaker(engine)
        gateway = StripeGateway(config)

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(stream=lifecycles(), data=st.data())
        def check(stream: list[Template], data: st.DataObject) -> None:
            ordered_run, shuffled_run = next(_runs), next(_runs)
            ordered = realise(stream, ordered_run)
            shuffled = data.draw(st.permutations(realise(stream, shuffled_run)))
            repeats = data.draw(st.lists(st.sampled_from(shuffled), max_size=4))
            for evt in repeats:
                shuffled.insert(data.draw(st.integers(0, len(shuffled))), evt)

            runner.run(apply(sessionmaker, gateway, ordered))
            runner.run(apply(sessionmaker, gateway, shuffled))
            want = runner.run(state(sessionmaker, ordered_run))
            got = runner.run(state(sessionmaker, shuffled_run))
            assert got == want
            # And the ordered state is Stripe's latest: the last snapshot's status and time.
            last = [t for t in stream if t.type.startswith("customer.")][-1]
            assert want[2] == last.status
            assert want[3] == datetime.fromtimestamp(last.created, UTC)
            assert want[4] == expected_past_due_since(stream)
            assert want[7] == last.cancel_at_end

        try:
            check()
        finally:
            runner.run(gateway.close())
            runner.run(engine.dispose())
