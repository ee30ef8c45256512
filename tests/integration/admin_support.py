"""Helpers for operator API tests: customers in the emulator and our database, paid calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import stripe

from meterapi.db import Sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer
from tests.integration.billing_support import event

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def seed_customer(
    sessionmaker: Sessionmaker,
    sdk: stripe.StripeClient,
    *,
    email: str,
    status: str = "active",
    pepper: bytes,
    period: tuple[datetime, datetime] | None = None,
) -> tuple[str, str]:
    """A customer in the emulator and in our database, with one key: (cus_…, the key)."""
    stripe_customer = await sdk.v1.customers.create_async(params={"email": email})
    async with session_scope(sessionmaker) as session:
        customer = Customer(
            stripe_customer_id=stripe_customer.id,
            email=email,
            subscription_status=status,
            current_period_start=period[0] if period else None,
            current_period_end=period[1] if period else None,
        )
        session.add(customer)
        await session.flush()
        assert customer.id is not None
        _, plaintext = await service.issue(
            session, customer_id=customer.id, policy=KeyPolicy(pepper=pepper, live=False)
        )
    return stripe_customer.id, plaintext


async def call_paid(client: httpx.AsyncClient, key: str, n: int) -> None:
    for _ in range(n):
        response = await client.get("/v1/data", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 20.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def send_behind_our_back(
    sdk: stripe.StripeClient, *, stripe_customer_id: str, value: int, identifier: str
) -> None:
    """A meter event the service did not send: drift that reconciliation must find."""
    await sdk.v1.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "identifier": identifier,
            "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
        }
    )


async def failing_checkout_event(
    sdk: stripe.StripeClient, price_id: str
) -> tuple[dict[str, Any], str]:
    """A completed Checkout Session's event for a real subscription on our price, whose
    handling fetches the subscription from Stripe: (the event, the subscription id)."""
    customer = await sdk.v1.customers.create_async(params={"email": "replay@example.com"})
    subscription = await sdk.v1.subscriptions.create_async(
        params={"customer": customer.id, "items": [{"price": price_id}]}
    )
    checkout = {
        "id": f"cs_test_replay_{subscription.id}",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "customer": customer.id,
        "customer_email": "replay@example.com",
        "subscription": subscription.id,
    }
    return event("checkout.session.completed", checkout, created=int(time.time())), subscription.id
