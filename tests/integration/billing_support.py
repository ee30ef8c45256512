"""Helpers for billing tests: Stripe-shaped events signed like Stripe signs them, and the app
under uvicorn on loopback so the emulator can deliver webhooks to it over HTTP."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import stripe
import uvicorn
from fastapi import FastAPI
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.models import Customer, StripeEvent

WEBHOOK_SECRET = "whsec_billing_tests_0123456789"
PRICE = "price_ours"
OTHER_PRICE = "price_someone_else"
# Nothing listens here: a test that does not expect a Stripe call fails fast if one is made.
NO_STRIPE = "http://127.0.0.1:9"

_ids = itertools.count(1)


def subscription(
    *,
    sub_id: str = "sub_1",
    customer: str = "cus_1",
    status: str = "active",
    price: str = PRICE,
    period: tuple[int, int] = (1_800_000_000, 1_802_592_000),
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    """A subscription object as API 2025-03-31+ shapes it (periods on the item)."""
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "cancel_at": period[1] if cancel_at_period_end else None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{sub_id}",
                    "object": "subscription_item",
                    "price": {"id": price, "object": "price"},
                    "current_period_start": period[0],
                    "current_period_end": period[1],
                }
            ],
        },
    }


def invoice(
    *, sub_id: str = "sub_1", customer: str = "cus_1", price: str = PRICE
) -> dict[str, Any]:
    return {
        "id": f"in_{next(_ids)}",
        "object": "invoice",
        "customer": customer,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub_id},
        },
        "lines": {
            "object": "list",
            "data": [{"pricing": {"price_details": {"price": price}}}],
        },
    }


def event(
    event_type: str, obj: dict[str, Any], *, created: int, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{next(_ids)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "type": event_type,
        "data": {"object": obj, "previous_attributes": None},
        "livemode": False,
    }


def signed(
    evt: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery, signed as Stripe signs them."""
    body = json.dumps(evt)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


async def deliver(client: httpx.AsyncClient, evt: dict[str, Any]) -> httpx.Response:
    body, headers = signed(evt)
    return await client.post("/webhooks/stripe", content=body, headers=headers)


async def customer_by_stripe_id(session: AsyncSession, stripe_id: str) -> Customer | None:
    query = select(Customer).where(Customer.stripe_customer_id == stripe_id)
    return (await session.exec(query.execution_options(populate_existing=True))).first()


async def inbox(session: AsyncSession) -> list[StripeEvent]:
    query = select(StripeEvent).execution_options(populate_existing=True)
    return list((await session.exec(query)).all())


class AppServer:
    """The service under uvicorn on 127.0.0.1 (a free port) in a daemon thread.

    ``make_app(url)`` builds the app once the URL is known, so settings can carry it.
    """

    def __init__(self, make_app: Callable[[str], FastAPI]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = make_app(self.url)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
