"""Outbound webhooks through real processes: two ``meterapi`` services on one database deliver
the outbox to a receiver process that fails the first deliveries, answers 410 for one customer,
and verifies every signature with the ``standardwebhooks`` verifier."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer, OutboundStatus
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import EMULATOR_WEBHOOK_SECRET
from tests.integration.conftest import Stack
from tests.integration.outbound_support import (
    OUTBOUND_SECRET,
    ReceiverProcess,
    assert_order_per_customer,
    eventually,
    new_customer_with_key,
    outbox_rows,
)
from tests.integration.servers import ServiceProcess

CUSTOMERS = ["cus_out_a", "cus_out_b", "cus_out_c", "cus_out_d", "cus_out_gone"]
ROUNDS = 6  # events per customer: key.created, key.revoked, key.created, …
FAIL_FIRST = 8


async def write_events(db_url: str) -> None:
    """Each customer's keys issued and revoked in turn, one transaction per change, customers
    interleaved: every change writes one outbound event in its own transaction."""
    engine = make_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    try:
        async with session_scope(sessionmaker) as session:
            rows = [Customer(stripe_customer_id=c, subscription_status="active") for c in CUSTOMERS]
            session.add_all(rows)
            await session.flush()
            ids = [row.id for row in rows]
        last_key: dict[int, str] = {}
        for round_ in range(ROUNDS):
            for customer_id in ids:
                assert customer_id is not None
                async with session_scope(sessionmaker) as session:
                    if round_ % 2 == 0:
                        key, _ = await key_service.issue(
                            session,
                            customer_id=customer_id,
                            policy=KeyPolicy(pepper=b"p", live=False),
                        )
                        last_key[customer_id] = key.id
                    else:
                        await key_service.revoke(
                            session,
                            key_id=last_key[customer_id],
                            customer_id=customer_id,
                            allow_last=True,
                        )
    finally:
        await engine.dispose()


def metric(text: str, outcome: str) -> float:
    pattern = rf'^meterapi_outbound_webhook_deliveries_total{{outcome="{outcome}"}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_two_services_deliver_every_event_once_in_order(
    db_url: str, tmp_path: Path, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    with ReceiverProcess(tmp_path, fail_first=FAIL_FIRST, gone_customer="cus_out_gone") as hook:
        env = {
            "METERAPI_DATABASE_URL": db_url,
            "METERAPI_STRIPE_API_BASE": stripe_emulator.url,
            "METERAPI_STRIPE_PRICE_ID": stripe_price,
            "METERAPI_WEBHOOK_URL": hook.url,
            "METERAPI_WEBHOOK_SECRET": OUTBOUND_SECRET,
            "METERAPI_WEBHOOK_FIRST_RETRY_S": "0.2",
            "METERAPI_WEBHOOK_POLL_S": "0.1",
        }
        services = [ServiceProcess(env, log_path=tmp_path / f"service{i}.log") for i in range(2)]
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in services))
        try:
            await write_events(db_url)

            async def settled() -> bool:
                rows = await outbox_rows(db_url)
                return bool(rows) and all(r.status != OutboundStatus.PENDING for r in rows)

            await eventually(settled, within=90)
            async with httpx.AsyncClient() as client:
                scraped = [(await client.get(f"{s.url}/metrics")).text for s in services]
        finally:
            for service in services:
                assert await asyncio.to_thread(service.terminate)
        records = hook.records()

    rows = await outbox_rows(db_url)
    assert len(rows) == len(CUSTOMERS) * ROUNDS
    created = [r.event_id for r in rows]
    gone = {r.event_id for r in rows if r.status == OutboundStatus.GONE}
    delivered = {r.event_id for r in rows if r.status == OutboundStatus.DELIVERED}
    assert len(gone) == ROUNDS and len(delivered) == len(rows) - ROUNDS
    assert all(r.claimed_by is None and r.claimed_until is None for r in rows)

    # Every delivery was signed so that the standardwebhooks verifier accepts it.
    assert records and all(r["verified"] for r in records)
    # Never the same event twice at the same time, though two services raced for it.
    assert not [r for r in records if r["overlapping"]]
    # The first deliveries failed (503) and were retried under the same webhook-id until a
    # 2xx; each event was answered 2xx (or 410) exactly once, and nothing after a 410.
    assert sum(r["status"] == 503 for r in records) == FAIL_FIRST
    final = [r for r in records if r["status"] < 300 or r["status"] == 410]
    assert sorted(r["id"] for r in final) == sorted(created)
    for event_id in gone:
        tries = [r for r in records if r["id"] == event_id]
        assert tries[-1]["status"] == 410 and all(t["status"] != 410 for t in tries[:-1])
    assert {r["id"] for r in records if r["status"] == 503} <= set(created)
    # Each customer's events arrived in the order they were written.
    assert_order_per_customer(records, created)
    # The body is {"type", "timestamp", "data"}, data naming the Stripe customer.
    first = next(r for r in final if r["type"] == "key.created")
    assert first["customer_id"] in CUSTOMERS and set(first["data"]) == {"customer_id", "key"}
    # /metrics of the two services add up to what the receiver saw.
    assert sum(metric(t, "delivered") for t in scraped) == len(delivered)
    assert sum(metric(t, "gone") for t in scraped) == len(gone)
    assert sum(metric(t, "retry") for t in scraped) == FAIL_FIRST


async def test_a_receiver_with_another_secret_refuses_every_delivery(
    db_url: str, tmp_path: Path, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    """The signature is real: a receiver holding a different secret rejects it, and the event
    stays pending (401 is retried), its last error saying why."""
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    with ReceiverProcess(tmp_path, secret=other) as hook:
        env = {
            "METERAPI_DATABASE_URL": db_url,
            "METERAPI_STRIPE_API_BASE": stripe_emulator.url,
            "METERAPI_STRIPE_PRICE_ID": stripe_price,
            "METERAPI_WEBHOOK_URL": hook.url,
            "METERAPI_WEBHOOK_SECRET": OUTBOUND_SECRET,
            "METERAPI_WEBHOOK_FIRST_RETRY_S": "0.2",
            "METERAPI_WEBHOOK_POLL_S": "0.1",
        }
        service = ServiceProcess(env, log_path=tmp_path / "service.log")
        await asyncio.to_thread(service.start)
        try:
            await new_customer_with_key(db_url, "cus_out_x")

            async def refused_twice() -> bool:
                return len(hook.records()) >= 2

            await eventually(refused_twice)
        finally:
            assert await asyncio.to_thread(service.terminate)
        records = hook.records()
    assert {r["status"] for r in records} == {401} and not any(r["verified"] for r in records)
    assert len({r["id"] for r in records}) == 1  # the same webhook-id on every retry
    [row] = await outbox_rows(db_url)
    assert row.status == OutboundStatus.PENDING and row.attempts >= 2
    assert row.last_error == "HTTP 401"


async def test_a_subscribers_journey_reaches_the_receiver(stack: Stack, tmp_path: Path) -> None:
    """Checkout and payment (Stripe's webhook), the key claim and a cancellation in Stripe,
    through a real service: the receiver gets customer.provisioned, key.created and
    subscription.access_changed for that customer, in that order."""
    with ReceiverProcess(tmp_path) as hook:
        env = stack.env(
            METERAPI_STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
            METERAPI_WEBHOOK_URL=hook.url,
            METERAPI_WEBHOOK_SECRET=OUTBOUND_SECRET,
        )
        service = ServiceProcess(env, log_path=tmp_path / "service.log")
        await asyncio.to_thread(service.start)
        stack.emulator.set_webhook(f"{service.url}/webhooks/stripe")
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=10) as api:
                created = await api.post("/v1/checkout", json={"email": "journey@example.com"})
                assert created.status_code == 201, created.text
                session_id = created.json()["id"]
                paid = await api.post(created.json()["url"], data={"email": "journey@example.com"})
                assert paid.status_code == 303

                async def announced(event_type: str) -> bool:
                    return any(r["type"] == event_type for r in hook.records())

                await eventually(lambda: announced("customer.provisioned"))
                claim = {
                    "checkout_session_id": session_id,
                    "claim_token": created.json()["claim_token"],
                }
                claimed = await api.post("/v1/keys/claim", json=claim)
                assert claimed.status_code == 201, claimed.text
                await eventually(lambda: announced("key.created"))
                done = await stack.sdk.v1.checkout.sessions.retrieve_async(session_id)
                assert isinstance(done.subscription, str)
                await stack.sdk.v1.subscriptions.cancel_async(done.subscription)
                await eventually(lambda: announced("subscription.access_changed"))
        finally:
            stack.emulator.set_webhook(None)
            assert await asyncio.to_thread(service.terminate)
        records = hook.records()

    assert all(r["verified"] and r["status"] < 300 for r in records)
    assert [r["type"] for r in records] == [
        "customer.provisioned",
        "key.created",
        "subscription.access_changed",
    ]
    customer = records[0]["data"]["customer_id"]
    assert customer.startswith("cus_") and {r["customer_id"] for r in records} == {customer}
    assert records[0]["data"]["email"] == "journey@example.com"
    assert records[1]["data"]["key"] == claimed.json()["key"]
    assert records[2]["data"] == {"customer_id": customer, "access": "denied", "status": "canceled"}
