"""The subscriber's journey through the Stripe emulator with the real SDK: Checkout, the hosted
page's Pay button, webhooks delivered over HTTP to the app, the key claim, access that follows
the subscription, and the billing portal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import stripe
from fastapi import FastAPI

from meterapi.app import create_app
from meterapi.billing.claim import claim_token
from meterapi.db import Sessionmaker
from meterapi.models import CheckoutSession
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import make_settings
from tests.integration.billing_support import WEBHOOK_SECRET, AppServer, inbox

# No Stripe key in these settings: the development pepper stands in for METERAPI_KEY_PEPPER.
PEPPER = make_settings("sqlite+aiosqlite://").pepper_bytes()


@dataclass
class Stack:
    emulator: EmulatorServer
    control: EmulatorControl
    stripe: stripe.StripeClient
    price_id: str
    app_url: str
    api: httpx.AsyncClient  # to the app
    web: httpx.AsyncClient  # a browser, to the hosted pages


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(webhook_secret=WEBHOOK_SECRET, webhook_retry_delays=(0.1, 0.2)) as server:
        yield server


async def _price(client: stripe.StripeClient, event_name: str = "api_requests") -> str:
    meter = await client.v1.billing.meters.create_async(
        params={
            "display_name": "API requests",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
        }
    )
    price = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "product_data": {"name": "API requests"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return price.id


@pytest.fixture
async def stack(db_url: str, emulator: EmulatorServer) -> AsyncIterator[Stack]:
    http = stripe.HTTPXClient(timeout=10)
    client = stripe.StripeClient(
        "sk_test_billing_journey",
        http_client=http,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
    )
    price_id = await _price(client)

    def build(url: str) -> FastAPI:
        return create_app(
            make_settings(
                db_url,
                stripe_api_base=emulator.url,
                stripe_price_id=price_id,
                stripe_webhook_secret=WEBHOOK_SECRET,
                public_url=url,
            )
        )

    with AppServer(build) as server:
        emulator.set_webhook(f"{server.url}/webhooks/stripe")
        async with (
            EmulatorControl(emulator.url) as control,
            httpx.AsyncClient(base_url=server.url, timeout=10) as api,
            httpx.AsyncClient(timeout=10) as web,
        ):
            yield Stack(emulator, control, client, price_id, server.url, api, web)
    await http.close_async()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@dataclass
class Paid:
    session_id: str
    claim_token: str


async def checkout_and_pay(stack: Stack, email: str = "buyer@example.com") -> Paid:
    created = await stack.api.post("/v1/checkout", json={"email": email})
    assert created.status_code == 201, created.text
    session_id, url = created.json()["id"], created.json()["url"]
    paid = await stack.web.post(url, data={"email": email})  # the hosted page's Pay button
    assert paid.status_code == 303
    assert paid.headers["location"] == f"{stack.app_url}/dashboard?session_id={session_id}"
    return Paid(str(session_id), str(created.json()["claim_token"]))


async def claim(stack: Stack, paid: Paid) -> httpx.Response:
    body = {"checkout_session_id": paid.session_id, "claim_token": paid.claim_token}
    return await stack.api.post("/v1/keys/claim", json=body)


async def test_the_whole_journey(stack: Stack, sessionmaker: Sessionmaker) -> None:
    paid = await checkout_and_pay(stack)
    session_id = paid.session_id

    async def provisioned() -> bool:
        async with sessionmaker() as session:
            handled = {e.type for e in await inbox(session) if e.processed_at is not None}
            return (
                await session.get(CheckoutSession, session_id) is not None
                and {
                    "checkout.session.completed",
                    "customer.subscription.created",
                }
                <= handled
            )

    # By the checkout.session.completed webhook, over HTTP; the events come in any order.
    await eventually(provisioned)

    claimed = await claim(stack, paid)
    assert claimed.status_code == 201, claimed.text
    body = claimed.json()
    assert set(body) == {"api_key", "key"}
    assert body["key"]["last4"] == body["api_key"][-4:]
    headers = {"X-API-Key": body["api_key"]}
    assert (await stack.api.get("/v1/data", headers=headers)).status_code == 200

    again = await claim(stack, paid)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_claimed"

    portal = await stack.api.post("/v1/billing/portal", headers=headers)
    assert portal.status_code == 201
    assert portal.json()["url"].startswith(stack.emulator.url)

    # Access follows the subscription: cancelled in Stripe → 402 by webhook, without a restart.
    done = await stack.stripe.v1.checkout.sessions.retrieve_async(session_id)
    assert isinstance(done.subscription, str)
    await stack.stripe.v1.subscriptions.cancel_async(done.subscription)

    async def refused() -> bool:
        response = await stack.api.get("/v1/data", headers=headers)
        return response.status_code == 402

    await eventually(refused)
    response = await stack.api.get("/v1/data", headers=headers)
    assert response.json()["error"]["code"] == "subscription_inactive"


async def test_claim_before_the_webhook(stack: Stack, sessionmaker: Sessionmaker) -> None:
    stack.emulator.set_webhook(None)  # Stripe has not told us yet
    paid = await checkout_and_pay(stack)
    async with sessionmaker() as session:
        assert await inbox(session) == []

    claimed = await claim(stack, paid)
    assert claimed.status_code == 201, claimed.text
    headers = {"X-API-Key": claimed.json()["api_key"]}
    assert (await stack.api.get("/v1/data", headers=headers)).status_code == 200

    # The webhooks arrive late: provisioning is idempotent, and no second key appears.
    stack.emulator.set_webhook(f"{stack.app_url}/webhooks/stripe")
    for delivery in await stack.control.webhook_deliveries():
        await stack.control.redeliver(delivery["event"])

    async def all_handled() -> bool:
        async with sessionmaker() as session:
            events = await inbox(session)
        return len(events) >= 2 and all(e.processed_at is not None for e in events)

    await eventually(all_handled)
    assert (await stack.api.get("/v1/data", headers=headers)).status_code == 200
    listed = await stack.api.get("/v1/keys", headers=headers)
    assert len(listed.json()["data"]) == 1
    again = await claim(stack, paid)
    assert again.status_code == 409


async def test_concurrent_claims_yield_one_key(stack: Stack) -> None:
    stack.emulator.set_webhook(None)
    paid = await checkout_and_pay(stack)
    responses = await asyncio.gather(*(claim(stack, paid) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]


async def test_open_unknown_and_foreign_sessions_cannot_be_claimed(stack: Stack) -> None:
    created = await stack.api.post("/v1/checkout", json={"client_reference_id": "user-7"})
    assert created.status_code == 201
    open_claim = await claim(stack, Paid(created.json()["id"], created.json()["claim_token"]))
    assert open_claim.status_code == 402
    assert open_claim.json()["error"]["code"] == "checkout_incomplete"

    unknown = await claim(stack, Paid("cs_test_nope", claim_token("cs_test_nope", pepper=PEPPER)))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"

    # Another product on the same Stripe account: its sessions are not ours to key.
    other_price = await _price(stack.stripe, event_name="other_product_calls")
    foreign = await stack.stripe.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": other_price}],
            "success_url": "https://elsewhere.example/ok",
        }
    )
    assert foreign.url is not None
    assert (await stack.web.post(foreign.url, data={"email": "x@example.com"})).status_code == 303
    # Even with the right claim token (which only our checkout hands out).
    refused = await claim(stack, Paid(foreign.id, claim_token(foreign.id, pepper=PEPPER)))
    assert refused.status_code == 404


async def test_a_claimed_key_is_not_stored_by_any_cache(stack: Stack) -> None:
    created = await stack.api.post("/v1/checkout", json={"email": "nostore@example.com"})
    session_id, url = created.json()["id"], created.json()["url"]
    assert (await stack.web.post(url, data={"email": "nostore@example.com"})).status_code == 303
    claim = {"checkout_session_id": session_id}
    if "claim_token" in created.json():
        claim["claim_token"] = created.json()["claim_token"]
    claimed = await stack.api.post("/v1/keys/claim", json=claim)
    again = await stack.api.post("/v1/keys/claim", json=claim)
    unknown = await stack.api.post("/v1/keys/claim", json={"checkout_session_id": "cs_test_nope"})
    assert [r.status_code for r in (claimed, again, unknown)] == [201, 409, 404]
    for response in (claimed, again, unknown):
        assert response.headers["cache-control"] == "no-store"


async def test_a_claim_needs_the_token_checkout_gave(stack: Stack) -> None:
    """The session id alone (it shows in URLs and logs) does not reveal the key: a missing or
    wrong claim token gets the very answer an unknown session gets."""
    stack.emulator.set_webhook(None)
    paid = await checkout_and_pay(stack)
    other = await checkout_and_pay(stack, email="other@example.com")
    assert paid.claim_token and paid.claim_token != other.claim_token
    assert paid.session_id not in paid.claim_token

    unknown = await claim(stack, Paid("cs_test_nope", "x"))
    wrong_tokens: list[dict[str, object]] = [
        {"checkout_session_id": paid.session_id},
        {"checkout_session_id": paid.session_id, "claim_token": None},
        {"checkout_session_id": paid.session_id, "claim_token": ""},
        {"checkout_session_id": paid.session_id, "claim_token": other.claim_token},
        {"checkout_session_id": paid.session_id, "claim_token": paid.claim_token[:-1]},
        {"checkout_session_id": paid.session_id, "claim_token": paid.claim_token + "A"},
        {"checkout_session_id": paid.session_id, "claim_token": "é" * 10},
    ]
    for body in wrong_tokens:
        refused = await stack.api.post("/v1/keys/claim", json=body)
        assert refused.status_code == unknown.status_code == 404, body
        assert refused.json() == unknown.json(), body

    # The refused attempts changed nothing: the buyer's browser still claims its key, once.
    claimed = await claim(stack, paid)
    assert claimed.status_code == 201, claimed.text
    assert (
        await stack.api.get("/v1/data", headers={"X-API-Key": claimed.json()["api_key"]})
    ).status_code == 200
    assert (await claim(stack, other)).status_code == 201
