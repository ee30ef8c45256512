"""Fixtures: a live emulator on loopback, the real stripe SDK pointed at it, a webhook receiver."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meterapi.stripe_emulator import EmulatorControl, EmulatorServer

SECRET_KEY = "sk_test_emulator_tests"
WEBHOOK_SECRET = "whsec_tests_0123456789abcdef"
FAST_RETRIES = (0.1, 0.2, 0.4)


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """Records every delivery; answers 500 to the first `fail_first` of them."""

    url: str = ""
    fail_first: int = 0
    calls: list[Received] = field(default_factory=list)

    def events(self, secret: str = WEBHOOK_SECRET) -> list[stripe.Event]:
        """The successfully answered deliveries, each verified as a Stripe webhook."""
        return [
            stripe.Webhook.construct_event(r.body, r.headers["stripe-signature"], secret)
            for r in self.calls[self.fail_first :]
        ]

    async def wait_for(self, *types: str, within: float = 5.0) -> list[stripe.Event]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            events = self.events()
            if all(any(e.type == t for e in events) for t in types):
                return events
            await asyncio.sleep(0.02)
        seen = [e.type for e in self.events()]
        raise AssertionError(f"webhooks {types} not all delivered; got {seen}")

    async def wait_match(
        self, type_: str, match: Callable[[stripe.Event], bool], within: float = 5.0
    ) -> stripe.Event:
        """The first verified event of that type for which `match` holds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for event in self.events():
                if event.type == type_ and match(event):
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching {type_} webhook was delivered")


class ThreadedServer:
    """Any ASGI app under uvicorn on 127.0.0.1, port 0, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("receiver did not start")

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()

    async def hook(request: Request) -> Response:
        state.calls.append(Received(await request.body(), dict(request.headers)))
        failing = len(state.calls) <= state.fail_first
        return Response(status_code=500 if failing else 200)

    with ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as server:
        state.url = server.url + "/hook"
        yield state


@pytest.fixture
def emulator(receiver: WebhookReceiver) -> Iterator[EmulatorServer]:
    server = EmulatorServer(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        webhook_retry_delays=FAST_RETRIES,
    )
    with server:
        yield server


MakeClient = Callable[..., stripe.StripeClient]


@pytest.fixture
async def make_client(emulator: EmulatorServer) -> AsyncIterator[MakeClient]:
    """StripeClient factory (own HTTPXClient each), all closed at teardown."""
    http_clients: list[stripe.HTTPXClient] = []

    def make(
        *, api_key: str = SECRET_KEY, retries: int = 2, timeout: float = 10.0
    ) -> stripe.StripeClient:
        http = stripe.HTTPXClient(timeout=timeout)
        http_clients.append(http)
        return stripe.StripeClient(
            api_key,
            http_client=http,
            base_addresses={"api": emulator.url, "meter_events": emulator.url},
            max_network_retries=retries,
        )

    yield make
    for http in http_clients:
        await http.close_async()


@pytest.fixture
def client(make_client: MakeClient) -> stripe.StripeClient:
    return make_client()


@pytest.fixture
async def control(emulator: EmulatorServer) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(emulator.url) as ctl:
        yield ctl


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


@dataclass
class Catalog:
    meter: stripe.billing.Meter
    price: stripe.Price


async def make_catalog(
    client: stripe.StripeClient,
    *,
    unit_amount_decimal: str = "0.5",
    event_name: str = "api_requests",
) -> Catalog:
    meter = await client.v1.billing.meters.create_async(
        params={
            "display_name": "API requests",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    price = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount_decimal": unit_amount_decimal,
            "product_data": {"name": "API requests"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return Catalog(meter, price)


@pytest.fixture
async def catalog(client: stripe.StripeClient) -> Catalog:
    return await make_catalog(client)


@dataclass
class Subscribed:
    session: stripe.checkout.Session
    customer: str
    subscription: stripe.Subscription


async def subscribe(
    client: stripe.StripeClient, web: httpx.AsyncClient, price_id: str, email: str = "a@example.com"
) -> Subscribed:
    """Create a session and pay it on the hosted page, as a browser would."""
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": price_id}],
            "success_url": "https://app.example/ok?session_id={CHECKOUT_SESSION_ID}",
            "client_reference_id": "user-42",
        }
    )
    assert session.url is not None
    page = await web.post(session.url, data={"email": email})
    assert page.status_code == 303
    done = await client.v1.checkout.sessions.retrieve_async(
        session.id, params={"expand": ["subscription"]}
    )
    assert isinstance(done.customer, str)
    assert isinstance(done.subscription, stripe.Subscription)
    return Subscribed(done, done.customer, done.subscription)


@pytest.fixture
async def subscribed(
    client: stripe.StripeClient, web: httpx.AsyncClient, catalog: Catalog
) -> Subscribed:
    return await subscribe(client, web, catalog.price.id)


async def send_usage(
    client: stripe.StripeClient, customer: str, identifier: str, value: int = 1, **extra: Any
) -> stripe.billing.MeterEvent:
    return await client.v1.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "identifier": identifier,
            **extra,
        }
    )


def pytest_configure(config: pytest.Config) -> None:
    # stripe.HTTPXClient posts bytes through httpx's `data=`, which httpx deprecates.
    config.addinivalue_line(
        "filterwarnings", "ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"
    )
