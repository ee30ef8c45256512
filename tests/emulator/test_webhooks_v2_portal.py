"""Webhook retries and redelivery, the v2 meter event stream, the portal, persistence."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from stripe._encode import _api_encode

from meterapi.stripe_emulator import EmulatorControl, EmulatorServer, sign
from meterapi.stripe_emulator.wire import decode_form

from .conftest import (
    SECRET_KEY,
    Subscribed,
    ThreadedServer,
    WebhookReceiver,
    send_usage,
)


async def test_failed_deliveries_are_retried_until_accepted(
    client: stripe.StripeClient, receiver: WebhookReceiver, control: EmulatorControl
) -> None:
    receiver.fail_first = 2
    customer = await client.v1.customers.create_async(params={"email": "r@example.com"})
    event = await receiver.wait_match("customer.created", lambda e: e.data.object.id == customer.id)
    assert len(receiver.calls) == 3  # two 500s, then the accepted attempt
    (delivery,) = await control.webhook_deliveries(type="customer.created")
    assert delivery["event"] == event.id and delivery["status"] == "delivered"
    assert [a.get("status_code") for a in delivery["attempts"]] == [500, 500, 200]


async def test_redelivery_and_late_webhook_url(
    emulator: EmulatorServer, client: stripe.StripeClient, control: EmulatorControl
) -> None:
    emulator.set_webhook(None)
    customer = await client.v1.customers.create_async()
    (delivery,) = await control.webhook_deliveries()
    assert delivery["status"] == "no_endpoint"
    received: list[bytes] = []

    async def hook(request: Request) -> Response:
        received.append(await request.body())
        assert stripe.Webhook.construct_event(
            received[-1], request.headers["stripe-signature"], "whsec_late"
        )
        return Response()

    with ThreadedServer(Starlette(routes=[Route("/", hook, methods=["POST"])])) as late:
        emulator.set_webhook(late.url + "/", "whsec_late")
        await control.redeliver(delivery["event"])
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
    assert len(received) == 1 and customer.id.encode() in received[0]


def test_sign_matches_the_sdk() -> None:
    header = sign('{"a": 1}', "whsec_x", 1700000000)
    expected = stripe.WebhookSignature.generate_signature_header(
        '{"a": 1}', "whsec_x", timestamp=1700000000
    )
    assert header == expected


async def test_v2_session_and_stream(
    client: stripe.StripeClient,
    subscribed: Subscribed,
    control: EmulatorControl,
) -> None:
    session = await client.v2.billing.meter_event_session.create_async()
    assert isinstance(session, stripe.v2.billing.MeterEventSession)
    assert session.expires_at > session.created
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events = [
        {
            "event_name": "api_requests",
            "identifier": f"s{n}",
            "timestamp": stamp,
            "payload": {"stripe_customer_id": subscribed.customer, "value": "2"},
        }
        for n in range(3)
    ]
    await client.v2.billing.meter_event_stream.create_async(
        params={"events": events}, options={"api_key": session.authentication_token}
    )
    assert (await control.meter_events())["totals"] == {subscribed.customer: 6}
    with pytest.raises(stripe.InvalidRequestError):
        await client.v2.billing.meter_event_stream.create_async(
            params={"events": events * 34}, options={"api_key": session.authentication_token}
        )
    await control.expire_meter_event_sessions()
    with pytest.raises(stripe.TemporarySessionExpiredError) as caught:
        await client.v2.billing.meter_event_stream.create_async(
            params={"events": events}, options={"api_key": session.authentication_token}
        )
    assert caught.value.http_status == 401
    assert caught.value.code == "billing_meter_event_session_expired"


async def test_v2_single_meter_event(client: stripe.StripeClient, subscribed: Subscribed) -> None:
    event = await client.v2.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "identifier": "v2-one",
            "payload": {"stripe_customer_id": subscribed.customer, "value": "1"},
        }
    )
    assert isinstance(event, stripe.v2.billing.MeterEvent) and event.identifier == "v2-one"
    with pytest.raises(stripe.InvalidRequestError):
        await send_usage(client, subscribed.customer, "v2-one")


async def test_portal_session_and_page(
    client: stripe.StripeClient, subscribed: Subscribed, web: httpx.AsyncClient
) -> None:
    portal = await client.v1.billing_portal.sessions.create_async(
        params={"customer": subscribed.customer, "return_url": "https://app.example/account"}
    )
    assert isinstance(portal, stripe.billing_portal.Session)
    assert portal.id.startswith("bps_") and portal.customer == subscribed.customer
    page = await web.get(portal.url)
    assert page.status_code == 200 and subscribed.subscription.id in page.text
    action = f"/portal/{portal.id}/subscriptions/{subscribed.subscription.id}/cancel"
    assert action in page.text
    done = await web.post(portal.url.rsplit("/portal/", 1)[0] + action)
    assert done.status_code == 303
    sub = await client.v1.subscriptions.retrieve_async(subscribed.subscription.id)
    assert sub.cancel_at_period_end is True


async def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    with EmulatorServer(state_file=path) as first:
        async with httpx.AsyncClient(auth=(SECRET_KEY, "")) as http:
            created = (await http.post(first.url + "/v1/customers", data={"email": "p@x"})).json()
    with EmulatorServer(state_file=path) as second:
        async with httpx.AsyncClient(auth=(SECRET_KEY, "")) as http:
            again = await http.get(second.url + f"/v1/customers/{created['id']}")
    assert again.status_code == 200 and again.json()["email"] == "p@x"


def test_bracket_keys_round_trip_through_the_sdk_encoder() -> None:
    params = {
        "line_items": [{"price": "price_1"}, {"price": "price_2"}],
        "metadata": {"user_id": "42"},
        "subscription_data": {"metadata": {"a": "b"}},
        "expand": ["subscription", "customer"],
        "success_url": "https://x/ok?session_id={CHECKOUT_SESSION_ID}&a=1",
    }
    body = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
    assert decode_form(body.encode()) == params
