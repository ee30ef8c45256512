"""``POST /webhooks/stripe``: verify, store once, handle once, in any order."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from meterapi.app import create_app
from meterapi.billing import subscriptions
from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker
from tests.conftest import make_settings
from tests.integration.billing_support import (
    NO_STRIPE,
    OTHER_PRICE,
    PRICE,
    WEBHOOK_SECRET,
    customer_by_stripe_id,
    deliver,
    event,
    inbox,
    invoice,
    signed,
    subscription,
)

T0 = 1_800_000_000


@pytest.fixture
def settings(db_url: str) -> Settings:
    """The suite's ``app`` with our price and webhook secret, and no Stripe: events carry all."""
    return make_settings(
        db_url,
        stripe_api_base=NO_STRIPE,
        stripe_price_id=PRICE,
        stripe_webhook_secret=WEBHOOK_SECRET,
        past_due_grace_s=3600,
    )


async def _revision(sessionmaker: Sessionmaker) -> int:
    async with sessionmaker() as session:
        return int((await session.exec(text("SELECT revision FROM cache_revision"))).scalar())


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_subscription_event_provisions_the_customer(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    evt = event("customer.subscription.created", subscription(), created=T0)
    response = await deliver(client, evt)
    assert response.status_code == 200
    assert response.json() == {"received": True, "outcome": "processed"}
    async with sessionmaker() as session:
        customer = await customer_by_stripe_id(session, "cus_1")
        (stored,) = await inbox(session)
    assert customer is not None
    assert customer.subscription_id == "sub_1"
    assert customer.subscription_item_id == "si_sub_1"
    assert customer.subscription_status == "active"
    assert customer.subscription_synced_at == at(T0)
    assert customer.current_period_start == at(1_800_000_000)
    assert customer.current_period_end == at(1_802_592_000)
    assert stored.id == evt["id"] and stored.processed_at is not None and stored.attempts == 1


async def test_tampered_body_is_400_and_changes_nothing(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    body, headers = signed(event("customer.subscription.created", subscription(), created=T0))
    tampered = body.replace(b'"active"', b'"trialing"')
    response = await client.post("/webhooks/stripe", content=tampered, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    missing = await client.post("/webhooks/stripe", content=body)
    assert missing.status_code == 400
    wrong_secret = signed(
        event("customer.subscription.created", subscription(), created=T0), secret="whsec_x"
    )
    assert (
        await client.post("/webhooks/stripe", content=wrong_secret[0], headers=wrong_secret[1])
    ).status_code == 400
    async with sessionmaker() as session:
        assert await inbox(session) == []
        assert await customer_by_stripe_id(session, "cus_1") is None


async def test_stale_timestamp_is_400_and_changes_nothing(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    evt = event("customer.subscription.created", subscription(), created=T0)
    body, headers = signed(evt, timestamp=int(time.time()) - 301)
    response = await client.post("/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    async with sessionmaker() as session:
        assert await inbox(session) == []
    # The same event freshly signed is accepted: only the stale signature was refused.
    assert (await deliver(client, evt)).json()["outcome"] == "processed"


async def test_unknown_type_and_other_price_are_ignored_with_200(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    unknown = await deliver(client, event("charge.refunded", {"id": "ch_1"}, created=T0))
    other_sub = subscription(sub_id="sub_x", customer="cus_x", price=OTHER_PRICE)
    other = await deliver(client, event("customer.subscription.created", other_sub, created=T0))
    other_invoice = invoice(sub_id="sub_x", customer="cus_x", price=OTHER_PRICE)
    failed = await deliver(client, event("invoice.payment_failed", other_invoice, created=T0))
    for response in (unknown, other, failed):
        assert response.status_code == 200
        assert response.json()["outcome"] == "ignored"
    async with sessionmaker() as session:
        assert await customer_by_stripe_id(session, "cus_x") is None
        assert len(await inbox(session)) == 3
        signals = await session.exec(text("SELECT count(*) FROM subscription_signal"))
        assert signals.scalar() == 0


async def test_five_concurrent_deliveries_take_effect_once(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    before = await _revision(sessionmaker)
    evt = event("customer.subscription.created", subscription(), created=T0)
    responses = await asyncio.gather(*(deliver(client, evt) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["duplicate"] * 4 + ["processed"]
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        customers = await session.exec(text("SELECT count(*) FROM customer"))
        assert customers.scalar() == 1
    assert stored.attempts == 1
    # The access change was announced once: one effect, not five.
    assert await _revision(sessionmaker) == before + 1


async def test_older_news_is_ignored_and_same_second_ties_ask_stripe(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    newer = event("customer.subscription.updated", subscription(status="past_due"), created=T0 + 5)
    older = event("customer.subscription.created", subscription(status="active"), created=T0)
    assert (await deliver(client, newer)).json()["outcome"] == "processed"
    assert (await deliver(client, older)).json()["outcome"] == "processed"
    async with sessionmaker() as session:
        customer = await customer_by_stripe_id(session, "cus_1")
    assert customer is not None
    assert customer.subscription_status == "past_due"
    assert customer.subscription_synced_at == at(T0 + 5)
    assert customer.past_due_since == at(T0 + 5)
    # A second snapshot in the same second cannot be ordered by time: the fresh subscription
    # is fetched, and Stripe is unreachable here, so the delivery fails and stays retryable.
    tie = event("customer.subscription.updated", subscription(status="active"), created=T0 + 5)
    failed = await deliver(client, tie)
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "webhook_handling_failed"


async def test_payment_failure_then_recovery_moves_past_due_since(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    await deliver(client, event("customer.subscription.created", subscription(), created=T0))
    await deliver(client, event("invoice.payment_failed", invoice(), created=T0 + 10))
    async with sessionmaker() as session:
        customer = await customer_by_stripe_id(session, "cus_1")
        assert customer is not None and customer.past_due_since == at(T0 + 10)
    past_due = subscription(status="past_due")
    await deliver(client, event("customer.subscription.updated", past_due, created=T0 + 10))
    await deliver(client, event("invoice.paid", invoice(), created=T0 + 20))
    await deliver(client, event("customer.subscription.updated", subscription(), created=T0 + 20))
    async with sessionmaker() as session:
        customer = await customer_by_stripe_id(session, "cus_1")
    assert customer is not None
    assert customer.subscription_status == "active"
    assert customer.past_due_since is None


async def test_a_handler_that_raises_midway_leaves_the_event_retryable(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the database went away halfway")

    evt = event("customer.subscription.created", subscription(), created=T0)
    with monkeypatch.context() as patch:
        # Fails after the customer row was written and flushed: a partial effect to undo.
        patch.setattr(subscriptions, "access_changed", broken)
        first = await deliver(client, evt)
    assert first.status_code == 500
    assert first.json()["error"]["code"] == "webhook_handling_failed"
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        assert stored.processed_at is None
        assert stored.attempts == 1
        assert stored.last_error == "RuntimeError"
        assert await customer_by_stripe_id(session, "cus_1") is None

    again = await deliver(client, evt)
    assert again.status_code == 200
    assert again.json()["outcome"] == "processed"
    assert (await deliver(client, evt)).json()["outcome"] == "duplicate"
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        customer = await customer_by_stripe_id(session, "cus_1")
    assert stored.processed_at is not None and stored.attempts == 2 and stored.last_error is None
    assert customer is not None and customer.subscription_status == "active"


async def test_checkout_without_price_configured_is_a_clear_503(db_url: str) -> None:
    application = create_app(make_settings(db_url, stripe_api_base=NO_STRIPE))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/checkout")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "billing_not_configured"


async def test_replay_handles_events_that_stripe_stopped_delivering(
    settings: Settings,
    client: httpx.AsyncClient,
    sessionmaker: Sessionmaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meterapi.billing import webhooks
    from meterapi.db import session_scope

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("down")

    evt = event("customer.subscription.created", subscription(), created=T0)
    with monkeypatch.context() as patch:
        patch.setattr(subscriptions, "access_changed", broken)
        assert (await deliver(client, evt)).status_code == 500

    async def replay() -> list[webhooks.Receipt]:  # what `meterapi webhooks replay` runs
        gateway = StripeGateway(settings)
        try:
            async with session_scope(sessionmaker) as session:
                return await webhooks.replay_unprocessed(session, gateway=gateway, price_id=PRICE)
        finally:
            await gateway.close()

    receipts = await replay()
    assert [(r.event_id, r.outcome) for r in receipts] == [(evt["id"], webhooks.Outcome.PROCESSED)]
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        customer = await customer_by_stripe_id(session, "cus_1")
    assert stored.processed_at is not None and stored.attempts == 2
    assert customer is not None and customer.subscription_status == "active"
    assert await replay() == []  # nothing left to replay
