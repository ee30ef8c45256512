"""Webhooks that are signed but unusable: not an event, a bad header, or an event Stripe
answers permanently about (CONTRACT §5, bad input; issue 13 items 7 and 8)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import stripe

from meterapi.billing import webhooks
from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker, session_scope
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.billing_support import (
    WEBHOOK_SECRET,
    customer_by_stripe_id,
    deliver,
    event,
    inbox,
    signed,
    subscription,
)
from tests.metrics_support import sample


@pytest.fixture
def settings(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Settings:
    """The suite's ``app``, verifying webhooks with the secret these tests sign with."""
    return stripe_settings(
        db_url, stripe_emulator, stripe_price, stripe_webhook_secret=WEBHOOK_SECRET
    )


def signed_raw(body: str) -> tuple[bytes, dict[str, str]]:
    header = stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


NOT_EVENTS: list[Any] = [
    [],
    [{"id": "evt_1", "type": "invoice.paid", "created": 1}],
    "evt_1",
    42,
    None,
    {},
    {"type": "invoice.paid", "created": 1_800_000_000, "data": {"object": {}}},
    {"id": "evt_1", "created": 1_800_000_000, "data": {"object": {}}},
    {"id": "evt_1", "type": "invoice.paid", "data": {"object": {}}},
    {"id": "evt_1", "type": "invoice.paid", "created": "soon", "data": {"object": {}}},
    {"id": "evt_1", "type": "invoice.paid", "created": 10**20, "data": {"object": {}}},
    {"id": "evt_1", "type": "invoice.paid", "created": 1_800_000_000},
    {"id": "evt_1", "type": "invoice.paid", "created": 1_800_000_000, "data": []},
    {"id": 7, "type": "invoice.paid", "created": 1_800_000_000, "data": {"object": {}}},
]


@pytest.mark.parametrize("body", NOT_EVENTS, ids=lambda b: json.dumps(b)[:40])
async def test_signed_json_that_is_not_an_event_is_400_and_stores_nothing(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker, body: Any
) -> None:
    content, headers = signed_raw(json.dumps(body))
    response = await client.post("/webhooks/stripe", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    async with sessionmaker() as session:
        assert await inbox(session) == []


async def test_non_ascii_signature_header_is_400_and_changes_nothing(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    evt = event("customer.subscription.created", subscription(), created=int(time.time()))
    body, headers = signed(evt)
    for forged in (headers["Stripe-Signature"] + "é", "t=1,v1=\u00ff\u00fe"):
        raw = [(b"stripe-signature", forged.encode("latin-1"))]
        response = await client.post(
            "/webhooks/stripe",
            content=body,
            headers=httpx.Headers([*raw, (b"content-type", b"application/json")]),
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    async with sessionmaker() as session:
        assert await inbox(session) == []
        assert await customer_by_stripe_id(session, "cus_1") is None


def checkout_completed(subscription_id: str, *, created: int) -> dict[str, Any]:
    return event(
        "checkout.session.completed",
        {
            "id": "cs_test_unknown_to_stripe",
            "object": "checkout.session",
            "mode": "subscription",
            "status": "complete",
            "customer": "cus_unknown",
            "subscription": subscription_id,
        },
        created=created,
    )


async def test_checkout_for_a_session_stripe_does_not_know_fails_permanently_with_2xx(
    settings: Settings, client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    evt = checkout_completed("sub_stripe_never_made", created=int(time.time()))
    response = await deliver(client, evt)
    assert response.status_code == 200
    assert response.json() == {"received": True, "outcome": "failed_permanently"}
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        assert await customer_by_stripe_id(session, "cus_unknown") is None
    # Visible to the operator: not processed, when it failed for good, and why.
    assert stored.processed_at is None
    assert stored.failed_at is not None
    assert stored.last_error == "NotFound: not_found"
    # Stripe's retry (or a manual resend) is answered the same way, and counted.
    assert (await deliver(client, evt)).status_code == 200
    async with sessionmaker() as session:
        (again,) = await inbox(session)
    assert again.attempts == 2 and again.failed_at is not None
    metrics = (await client.get("/metrics")).text
    assert sample(metrics, "meterapi_webhook_events_total", outcome="failed_permanently") == 2
    # `meterapi webhooks replay` still picks it up.
    gateway = StripeGateway(settings)
    try:
        async with session_scope(sessionmaker) as session:
            receipts = await webhooks.replay_unprocessed(session, gateway=gateway, price_id=None)
    finally:
        await gateway.close()
    assert [(r.event_id, r.outcome) for r in receipts] == [
        (evt["id"], webhooks.Outcome.FAILED_PERMANENTLY)
    ]


async def test_a_transient_stripe_failure_is_still_retried_by_stripe(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker, emulator_control: EmulatorControl
) -> None:
    evt = checkout_completed("sub_stripe_never_made", created=int(time.time()))
    await emulator_control.inject_fault("error", "/v1/subscriptions/*", count=None, status=500)
    response = await deliver(client, evt)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "webhook_handling_failed"
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
    assert stored.processed_at is None and stored.failed_at is None
    assert stored.last_error == "StripeUnavailable: stripe_unavailable"
    await emulator_control.clear_faults()
    # Once Stripe answers, its answer (404) is permanent.
    assert (await deliver(client, evt)).json()["outcome"] == "failed_permanently"


async def test_a_signed_event_with_an_unreadable_date_fails_permanently(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker, stripe_price: str
) -> None:
    far = subscription(price=stripe_price, period=(1_800_000_000, 10**15))
    evt = event("customer.subscription.created", far, created=int(time.time()))
    response = await deliver(client, evt)
    assert response.status_code == 200
    assert response.json()["outcome"] == "failed_permanently"
    async with sessionmaker() as session:
        (stored,) = await inbox(session)
        assert await customer_by_stripe_id(session, "cus_1") is None
    assert stored.failed_at is not None and stored.last_error == "ValueError"


# Signed events whose envelope is fine but whose object has a field of the wrong JSON type:
# handling them again would fail the same way, so Stripe is answered 2xx (not 500, which it
# would retry for three days) and the operator sees them as failed for good.
MISSHAPEN_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("customer.subscription.updated", {"id": "sub_x", "status": "active", "items": "x"}),
    ("customer.subscription.updated", {"id": "sub_x", "status": "active", "items": {"data": {}}}),
    ("customer.subscription.created", {"id": "sub_x", "items": {"data": ["x"]}}),
    ("invoice.paid", {"id": "in_x", "parent": "x"}),
    ("invoice.payment_failed", {"id": "in_x", "lines": ["x"]}),
]


@pytest.mark.parametrize(("event_type", "obj"), MISSHAPEN_OBJECTS, ids=lambda v: str(v)[:40])
async def test_a_signed_event_with_a_misshapen_object_fails_permanently_not_500(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker, event_type: str, obj: dict[str, Any]
) -> None:
    body = {"id": "evt_misshapen", "type": event_type, "created": int(time.time())}
    content, headers = signed_raw(json.dumps({**body, "data": {"object": obj}}))
    response = await client.post("/webhooks/stripe", content=content, headers=headers)
    assert response.status_code < 500
    async with sessionmaker() as session:
        stored = await inbox(session)
    assert all(s.processed_at is not None or s.failed_at is not None for s in stored)
