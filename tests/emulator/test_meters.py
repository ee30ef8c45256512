"""Meters, meter events (with Stripe's validation), adjustments and summaries."""

from __future__ import annotations

import time

import pytest
import stripe

from meterapi.stripe_emulator import EmulatorControl

from .conftest import Catalog, Subscribed, send_usage


async def test_meter_create_retrieve_list_deactivate(
    client: stripe.StripeClient, catalog: Catalog
) -> None:
    meter = catalog.meter
    assert isinstance(meter, stripe.billing.Meter)
    assert meter.id.startswith("mtr_test_")
    assert meter.status == "active" and meter.livemode is False
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    again = await client.v1.billing.meters.retrieve_async(meter.id)
    assert again.event_name == "api_requests"
    listed = await client.v1.billing.meters.list_async(params={"status": "active"})
    assert [m.id for m in listed.data] == [meter.id]
    off = await client.v1.billing.meters.deactivate_async(meter.id)
    assert off.status == "inactive" and off.status_transitions.deactivated_at is not None
    on = await client.v1.billing.meters.reactivate_async(meter.id)
    assert on.status == "active"


async def test_event_name_belongs_to_one_meter(
    client: stripe.StripeClient, catalog: Catalog
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.billing.meters.create_async(
            params={
                "display_name": "again",
                "event_name": "api_requests",
                "default_aggregation": {"formula": "sum"},
            }
        )
    assert caught.value.param == "event_name"


async def test_meter_event_is_stored_and_echoed(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    ts = int(time.time()) - 60
    event = await send_usage(client, subscribed.customer, "req-1", 3, timestamp=ts)
    assert isinstance(event, stripe.billing.MeterEvent)
    assert event.identifier == "req-1" and event.timestamp == ts
    assert event.payload.to_dict() == {"stripe_customer_id": subscribed.customer, "value": "3"}
    received = await control.meter_events(customer=subscribed.customer)
    assert [(r["identifier"], r["value"], r["timestamp"]) for r in received["data"]] == [
        ("req-1", "3", ts)
    ]
    assert received["totals"] == {subscribed.customer: 3}


async def test_duplicate_identifier_is_refused_like_stripe(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await send_usage(client, subscribed.customer, "req-dup")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await send_usage(client, subscribed.customer, "req-dup")
    assert caught.value.http_status == 400
    assert caught.value.user_message == "An event already exists with identifier req-dup."
    assert caught.value.headers is not None
    assert caught.value.headers.get("stripe-should-retry") == "false"
    assert len((await control.meter_events())["data"]) == 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"event_name": "nope"}, "event_name"),
        ({"payload": {"stripe_customer_id": "cus_missing", "value": "1"}}, "payload"),
        ({"payload": {"value": "1"}}, "payload"),
        ({"payload": {"stripe_customer_id": "{customer}", "value": "many"}}, "payload"),
        ({"timestamp": int(time.time()) - 36 * 86400}, "timestamp"),
        ({"timestamp": int(time.time()) + 3600}, "timestamp"),
    ],
)
async def test_invalid_meter_events_are_refused(
    client: stripe.StripeClient,
    subscribed: Subscribed,
    control: EmulatorControl,
    change: dict[str, object],
    param: str,
) -> None:
    params: dict[str, object] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": subscribed.customer, "value": "1"},
        "identifier": "bad-1",
    }
    params.update(change)
    payload = params["payload"]
    assert isinstance(payload, dict)
    if payload.get("stripe_customer_id") == "{customer}":
        payload["stripe_customer_id"] = subscribed.customer
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.billing.meter_events.create_async(params=params)  # type: ignore[arg-type]
    assert caught.value.http_status == 400
    assert str(caught.value.param).startswith(param)
    assert (await control.meter_events())["data"] == []


async def test_cancel_adjustment_removes_the_event_from_totals(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await send_usage(client, subscribed.customer, "keep", 2)
    await send_usage(client, subscribed.customer, "drop", 5)
    adjustment = await client.v1.billing.meter_event_adjustments.create_async(
        params={"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "drop"}}
    )
    assert isinstance(adjustment, stripe.billing.MeterEventAdjustment)
    assert adjustment.cancel is not None and adjustment.cancel.identifier == "drop"
    assert (await control.meter_events())["totals"] == {subscribed.customer: 2}
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.billing.meter_event_adjustments.create_async(
            params={"event_name": "api_requests", "cancel": {"identifier": "never-sent"}}
        )


async def test_summaries_sum_events_in_half_open_ranges(
    client: stripe.StripeClient, catalog: Catalog, subscribed: Subscribed
) -> None:
    hour = int(time.time()) // 3600 * 3600
    start = hour - 3600
    await send_usage(client, subscribed.customer, "a", 1, timestamp=start)
    await send_usage(client, subscribed.customer, "b", 2, timestamp=start + 1800)
    await send_usage(client, subscribed.customer, "c", 4, timestamp=hour)
    whole = await client.v1.billing.meters.event_summaries.list_async(
        catalog.meter.id,
        params={"customer": subscribed.customer, "start_time": start, "end_time": hour},
    )
    (summary,) = whole.data
    assert isinstance(summary, stripe.billing.MeterEventSummary)
    assert summary.aggregated_value == 3  # the event at `hour` is outside [start, hour)
    assert (summary.start_time, summary.end_time) == (start, hour)
    hourly = await client.v1.billing.meters.event_summaries.list_async(
        catalog.meter.id,
        params={
            "customer": subscribed.customer,
            "start_time": start,
            "end_time": hour + 3600,
            "value_grouping_window": "hour",
        },
    )
    assert [(s.start_time, s.aggregated_value) for s in hourly.data] == [(hour, 4), (start, 3)]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.billing.meters.event_summaries.list_async(
            catalog.meter.id,
            params={"customer": subscribed.customer, "start_time": start + 1, "end_time": hour},
        )
    assert caught.value.param == "start_time"
