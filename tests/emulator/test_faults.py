"""Fault injection, seen through the SDK's retries and exception classes."""

from __future__ import annotations

import time

import pytest
import stripe

from meterapi.stripe_emulator import EmulatorControl

from .conftest import MakeClient, Subscribed, send_usage

EVENTS = "/v1/billing/meter_events"


async def test_a_500_is_retried_by_the_sdk_and_then_succeeds(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    fault = await control.inject_fault("error", EVENTS, status=500, count=1)
    assert fault["remaining"] == 1
    event = await send_usage(client, subscribed.customer, "r500")
    assert event.identifier == "r500"
    assert (await control.meter_events())["totals"] == {subscribed.customer: 1}


async def test_persistent_500s_surface_as_api_error(
    make_client: MakeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("error", EVENTS, status=503, count=None)
    with pytest.raises(stripe.APIError) as caught:
        await send_usage(make_client(retries=1), subscribed.customer, "r503")
    assert caught.value.http_status == 503
    await control.clear_faults()
    assert (await control.meter_events())["data"] == []


async def test_rate_limit_without_retry_header_is_not_retried(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("rate_limit", EVENTS, count=1)
    with pytest.raises(stripe.RateLimitError) as caught:
        await send_usage(client, subscribed.customer, "r429")
    assert caught.value.http_status == 429
    # The fault was used up by that single call: the SDK did not retry a plain 429.
    await send_usage(client, subscribed.customer, "r429")


async def test_rate_limit_with_should_retry_true_is_retried(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("rate_limit", "/v1/billing/*", count=1, should_retry=True)
    await send_usage(client, subscribed.customer, "r429b")
    assert len((await control.meter_events())["data"]) == 1


async def test_hang_past_the_client_timeout_raises_and_applies_nothing(
    make_client: MakeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("hang", EVENTS, seconds=3, count=1)
    client = make_client(retries=0, timeout=0.5)
    # Raising at all is the timeout at work: a client that waited out the 3 s hang would
    # have received the answer and stored the event.
    with pytest.raises(stripe.APIConnectionError):
        await send_usage(client, subscribed.customer, "hang")
    assert (await control.meter_events())["data"] == []


async def test_hang_then_retry_succeeds(
    make_client: MakeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("hang", EVENTS, seconds=3, count=1)
    await send_usage(make_client(retries=2, timeout=0.5), subscribed.customer, "hang2")
    assert len((await control.meter_events())["data"]) == 1


async def test_lost_response_with_sdk_retries_stores_the_event_once(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("lost_response", EVENTS, count=1)
    # The SDK reuses its Idempotency-Key on retry, so the retry is an idempotent replay.
    event = await send_usage(client, subscribed.customer, "lost-1")
    assert event.last_response is not None
    assert event.last_response.headers.get("idempotent-replayed") == "true"
    rows = (await control.meter_events())["data"]
    assert [r["identifier"] for r in rows] == ["lost-1"]


async def test_lost_response_then_a_fresh_request_hits_the_duplicate_error(
    make_client: MakeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await control.inject_fault("lost_response", EVENTS, count=1)
    client = make_client(retries=0)
    with pytest.raises(stripe.APIError) as caught:
        await send_usage(client, subscribed.customer, "lost-2")
    assert caught.value.http_status == 500
    with pytest.raises(stripe.InvalidRequestError) as dup:
        await send_usage(client, subscribed.customer, "lost-2")
    assert "already exists with identifier lost-2" in str(dup.value.user_message)
    assert len((await control.meter_events())["data"]) == 1


async def test_latency_applies_to_every_matching_call(
    client: stripe.StripeClient, control: EmulatorControl
) -> None:
    fault = await control.inject_fault("latency", "*", seconds=0.15, count=None)
    started = time.monotonic()
    await client.v1.customers.list_async()
    await client.v1.customers.list_async()
    assert time.monotonic() - started >= 0.3
    faults = (await control._call("GET", "/faults"))["data"]
    assert [(f["id"], f["hits"], f["remaining"]) for f in faults] == [(fault["id"], 2, None)]
    await control.clear_faults()
    # Cleared: no rule is left to delay (or count) the next call.
    await client.v1.customers.list_async()
    assert (await control._call("GET", "/faults"))["data"] == []


async def test_regex_and_method_filters(
    client: stripe.StripeClient, control: EmulatorControl
) -> None:
    await control.inject_fault("error", r"^/v1/customers$", method="POST", count=None, status=502)
    await client.v1.customers.list_async()  # GET: not matched
    with pytest.raises(stripe.APIError):
        await client.v1.customers.create_async(options={"max_network_retries": 0})
