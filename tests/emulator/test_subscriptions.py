"""Subscription lifecycle over the API and the control endpoints, invoices and previews."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from meterapi.stripe_emulator import EmulatorControl

from .conftest import (
    Catalog,
    Subscribed,
    WebhookReceiver,
    make_catalog,
    send_usage,
    subscribe,
)


def last(receiver: WebhookReceiver, type_: str) -> stripe.Event:
    return [e for e in receiver.events() if e.type == type_][-1]


async def test_preview_prices_the_current_period_usage(
    client: stripe.StripeClient, subscribed: Subscribed
) -> None:
    for n in range(3):
        await send_usage(client, subscribed.customer, f"u{n}", 1)
    preview = await client.v1.invoices.create_preview_async(
        params={"customer": subscribed.customer, "subscription": subscribed.subscription.id}
    )
    assert isinstance(preview, stripe.Invoice)
    assert preview.id is not None and preview.id.startswith("upcoming_in_")
    assert preview.amount_due == 2  # 3 units at 0.5 cent = 1.5 cents, rounded to a whole cent
    (line,) = preview.lines.data
    assert isinstance(line, stripe.InvoiceLineItem)
    assert line.quantity == 3 and line.amount == 2
    assert line.pricing is not None and line.pricing.price_details is not None
    assert line.pricing.price_details.price == subscribed.subscription["items"].data[0].price.id
    assert line.parent is not None and line.parent.subscription_item_details is not None
    item = subscribed.subscription["items"].data[0]
    assert line.parent.subscription_item_details.subscription_item == item.id
    assert (line.period.start, line.period.end) == (
        item.current_period_start,
        item.current_period_end,
    )
    only_customer = await client.v1.invoices.create_preview_async(
        params={"customer": subscribed.customer}
    )
    assert only_customer.amount_due == 2


async def test_preview_with_whole_cent_price_and_events_outside_the_period(
    client: stripe.StripeClient, web: httpx.AsyncClient
) -> None:
    catalog = await make_catalog(client, unit_amount_decimal="25")
    sub = await subscribe(client, web, catalog.price.id)
    start = sub.subscription["items"].data[0].current_period_start
    await send_usage(client, sub.customer, "before", 100, timestamp=start - 10)
    await send_usage(client, sub.customer, "in", 4, timestamp=start)
    preview = await client.v1.invoices.create_preview_async(
        params={"subscription": sub.subscription.id}
    )
    assert preview.amount_due == 100 and preview.lines.data[0].quantity == 4


async def test_cancel_at_period_end_sends_updated_with_previous_attributes(
    client: stripe.StripeClient, subscribed: Subscribed, receiver: WebhookReceiver
) -> None:
    updated = await client.v1.subscriptions.update_async(
        subscribed.subscription.id, params={"cancel_at_period_end": True}
    )
    assert updated.cancel_at_period_end is True
    assert updated.cancel_at == subscribed.subscription["items"].data[0].current_period_end
    await receiver.wait_for("customer.subscription.updated")
    event = last(receiver, "customer.subscription.updated")
    assert event.data.previous_attributes is not None
    assert event.data.previous_attributes["cancel_at_period_end"] is False
    assert event.data.object.cancel_at_period_end is True


async def test_cancel_sends_deleted(
    client: stripe.StripeClient, subscribed: Subscribed, receiver: WebhookReceiver
) -> None:
    canceled = await client.v1.subscriptions.cancel_async(subscribed.subscription.id)
    assert canceled.status == "canceled" and canceled.ended_at is not None
    await receiver.wait_for("customer.subscription.deleted")
    assert last(receiver, "customer.subscription.deleted").data.object.status == "canceled"
    listed = await client.v1.subscriptions.list_async(params={"customer": subscribed.customer})
    assert listed.data == []
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.invoices.create_preview_async(
            params={"subscription": subscribed.subscription.id}
        )


async def test_pause_and_resume(
    client: stripe.StripeClient, subscribed: Subscribed, receiver: WebhookReceiver
) -> None:
    paused = await client.v1.subscriptions.pause_async(subscribed.subscription.id)
    assert paused.status == "paused"
    resumed = await client.v1.subscriptions.resume_async(subscribed.subscription.id)
    assert resumed.status == "active"
    await receiver.wait_for("customer.subscription.paused", "customer.subscription.resumed")
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.subscriptions.resume_async(subscribed.subscription.id)


async def test_control_past_due_then_active(
    client: stripe.StripeClient,
    subscribed: Subscribed,
    control: EmulatorControl,
    receiver: WebhookReceiver,
) -> None:
    await send_usage(client, subscribed.customer, "u", 10)
    await control.set_subscription_status(subscribed.subscription.id, "past_due")
    sub = await client.v1.subscriptions.retrieve_async(subscribed.subscription.id)
    assert sub.status == "past_due"
    await receiver.wait_for("invoice.payment_failed", "customer.subscription.updated")
    failed = last(receiver, "invoice.payment_failed").data.object
    assert failed.status == "open" and failed.amount_due == 5
    assert last(receiver, "customer.subscription.updated").data.previous_attributes["status"] == (
        "active"
    )

    await control.set_subscription_status(subscribed.subscription.id, "active")
    sub = await client.v1.subscriptions.retrieve_async(subscribed.subscription.id)
    assert sub.status == "active"
    invoice = await client.v1.invoices.retrieve_async(failed.id)
    assert invoice.status == "paid" and invoice.amount_paid == 5


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        ("canceled", "customer.subscription.deleted"),
        ("paused", "customer.subscription.paused"),
        ("unpaid", "customer.subscription.updated"),
    ],
)
async def test_control_statuses_send_their_events(
    subscribed: Subscribed,
    control: EmulatorControl,
    receiver: WebhookReceiver,
    status: str,
    event_type: str,
) -> None:
    body = await control.set_subscription_status(subscribed.subscription.id, status)
    assert body["status"] == status
    await receiver.wait_for(event_type)
    assert last(receiver, event_type).data.object.status == status


async def test_close_period_invoices_usage_and_rolls_the_period(
    client: stripe.StripeClient,
    subscribed: Subscribed,
    control: EmulatorControl,
    receiver: WebhookReceiver,
) -> None:
    await send_usage(client, subscribed.customer, "u1", 40)
    result = await control.close_period(subscribed.subscription.id)
    invoice = await client.v1.invoices.retrieve_async(result["invoice"]["id"])
    assert invoice.status == "paid" and invoice.amount_paid == 20
    assert invoice.billing_reason == "subscription_cycle"
    paid = await receiver.wait_match("invoice.paid", lambda e: e.data.object.id == invoice.id)
    assert paid.data.object.amount_paid == 20
    sub = await client.v1.subscriptions.retrieve_async(subscribed.subscription.id)
    item = sub["items"].data[0]
    assert item.current_period_start == invoice.period_end
    assert sub.latest_invoice == invoice.id
    preview = await client.v1.invoices.create_preview_async(
        params={"subscription": subscribed.subscription.id}
    )
    assert preview.amount_due == 0
    listed = await client.v1.invoices.list_async(
        params={"subscription": subscribed.subscription.id}
    )
    assert invoice.id in [i.id for i in listed.data]


async def test_close_period_with_failed_payment(
    client: stripe.StripeClient, subscribed: Subscribed, control: EmulatorControl
) -> None:
    await send_usage(client, subscribed.customer, "u1", 4, timestamp=int(time.time()))
    result = await control.close_period(subscribed.subscription.id, outcome="payment_failed")
    assert result["invoice"]["status"] == "open" and result["invoice"]["amount_due"] == 2
    assert result["subscription"]["status"] == "past_due"


async def test_subscription_created_through_the_api(
    client: stripe.StripeClient, catalog: Catalog, receiver: WebhookReceiver
) -> None:
    customer = await client.v1.customers.create_async(params={"email": "api@example.com"})
    sub = await client.v1.subscriptions.create_async(
        params={"customer": customer.id, "items": [{"price": catalog.price.id}]}
    )
    # Stripe leaves `quantity` out of a metered item rather than sending null.
    assert sub.status == "active" and "quantity" not in sub["items"].data[0]
    await receiver.wait_for("customer.subscription.created", "invoice.paid")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.subscriptions.create_async(
            params={"customer": customer.id, "items": [{"price": catalog.price.id, "quantity": 2}]}
        )
    assert "usage_type=metered" in str(caught.value.user_message)
