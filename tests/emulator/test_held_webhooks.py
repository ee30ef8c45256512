"""An emulator started before the service that receives its webhooks (``meterapi serve`` in
emulator mode) holds the events of the meantime and sends them once the URL is set, rather than
dropping them: a buyer quick enough to pay before the service's readiness check still gets a
webhook."""

from __future__ import annotations

import asyncio

import httpx
import stripe

from meterapi.stripe_emulator import EmulatorServer
from tests.emulator.conftest import SECRET_KEY, WEBHOOK_SECRET, WebhookReceiver


def _deliveries(server: EmulatorServer) -> dict[str, str]:
    rows = httpx.get(f"{server.url}/_emulator/webhooks", timeout=5).json()["data"]
    return {row["event"]: row["status"] for row in rows}


async def test_events_before_the_url_is_set_are_held_then_sent(receiver: WebhookReceiver) -> None:
    with EmulatorServer(webhook_secret=WEBHOOK_SECRET, hold_webhooks=True) as server:
        sdk = stripe.StripeClient(
            SECRET_KEY, base_addresses={"api": server.url, "meter_events": server.url}
        )
        customer = await sdk.v1.customers.create_async(params={"email": "early@example.com"})
        held = _deliveries(server)
        assert held and set(held.values()) == {"held"}
        assert receiver.calls == []

        server.set_webhook(receiver.url)
        events = await receiver.wait_for("customer.created")
        assert [e.data.object["id"] for e in events if e.type == "customer.created"] == [
            customer.id
        ]
        later = await sdk.v1.customers.create_async(params={"email": "later@example.com"})
        for _ in range(250):
            created = [
                e.data.object["id"] for e in receiver.events() if e.type == "customer.created"
            ]
            if len(created) == 2:
                break
            await asyncio.sleep(0.02)
        assert created == [customer.id, later.id]


async def test_without_holding_events_before_the_url_go_nowhere(
    receiver: WebhookReceiver,
) -> None:
    with EmulatorServer(webhook_secret=WEBHOOK_SECRET) as server:
        sdk = stripe.StripeClient(
            SECRET_KEY, base_addresses={"api": server.url, "meter_events": server.url}
        )
        await sdk.v1.customers.create_async(params={"email": "early@example.com"})
        assert set(_deliveries(server).values()) == {"no_endpoint"}
        server.set_webhook(receiver.url)
        later = await sdk.v1.customers.create_async(params={"email": "later@example.com"})
        events = await receiver.wait_for("customer.created")
        assert [e.data.object["id"] for e in events if e.type == "customer.created"] == [later.id]
