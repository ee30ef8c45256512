"""Checkout in subscription mode, the hosted page, and the webhooks it sends."""

from __future__ import annotations

import httpx
import pytest
import stripe

from .conftest import Catalog, WebhookReceiver, subscribe


async def test_metered_line_item_with_quantity_is_refused(
    client: stripe.StripeClient, catalog: Catalog
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.checkout.sessions.create_async(
            params={
                "mode": "subscription",
                "line_items": [{"price": catalog.price.id, "quantity": 1}],
                "success_url": "https://app.example/ok",
            }
        )
    assert caught.value.http_status == 400
    assert caught.value.user_message == (
        "Quantity should not be defined when recurring.usage_type=metered"
    )
    assert caught.value.param == "line_items[0][quantity]"


async def test_hosted_page_completes_the_session_and_redirects_with_its_id(
    client: stripe.StripeClient, web: httpx.AsyncClient, catalog: Catalog
) -> None:
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog.price.id}],
            "success_url": "https://app.example/ok?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://app.example/cancel",
            "metadata": {"user_id": "42"},
            "subscription_data": {"metadata": {"user_id": "42"}},
        }
    )
    assert isinstance(session, stripe.checkout.Session)
    assert session.status == "open"
    assert session.id.startswith("cs_test_")
    assert session.url is not None and session.url.startswith("http://127.0.0.1:")

    page = await web.get(session.url)
    assert page.status_code == 200
    assert "<form method='post'" in page.text and ">Pay</button>" in page.text
    assert page.headers["request-id"].startswith("req_")

    paid = await web.post(session.url, data={"email": "buyer@example.com"})
    assert paid.status_code == 303
    assert paid.headers["location"] == f"https://app.example/ok?session_id={session.id}"

    done = await client.v1.checkout.sessions.retrieve_async(
        session.id, params={"expand": ["subscription"]}
    )
    assert done.status == "complete"
    assert done.url is None
    assert isinstance(done.customer, str) and done.customer.startswith("cus_")
    subscription = done.subscription
    assert isinstance(subscription, stripe.Subscription)
    assert subscription.status == "active"
    assert subscription.metadata.to_dict() == {"user_id": "42"}
    (item,) = subscription["items"].data
    assert isinstance(item, stripe.SubscriptionItem)
    assert item.price.id == catalog.price.id
    assert item.current_period_end > item.current_period_start
    # One month, give or take the month's length.
    assert 28 * 86400 <= item.current_period_end - item.current_period_start <= 31 * 86400
    customer = await client.v1.customers.retrieve_async(done.customer)
    assert customer.email == "buyer@example.com"

    # Paying twice changes nothing: the page redirects to the same place.
    again = await web.post(session.url, data={})
    assert again.status_code == 303
    listed = await client.v1.subscriptions.list_async(params={"customer": done.customer})
    assert len(listed.data) == 1


async def test_completion_sends_signed_snapshot_events(
    client: stripe.StripeClient,
    web: httpx.AsyncClient,
    catalog: Catalog,
    receiver: WebhookReceiver,
) -> None:
    sub = await subscribe(client, web, catalog.price.id)
    events = await receiver.wait_for(
        "customer.created",
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
    )
    by_type = {e.type: e for e in events}
    completed = by_type["checkout.session.completed"]
    assert completed.api_version == "2026-10-28.endive"
    assert completed.object == "event" and completed.id.startswith("evt_")
    session = completed.data.object
    assert isinstance(session, stripe.checkout.Session)
    assert session.id == sub.session.id
    assert session.customer == sub.customer
    assert session.subscription == sub.subscription.id
    assert session.client_reference_id == "user-42"
    created = by_type["customer.subscription.created"].data.object
    assert isinstance(created, stripe.Subscription) and created.status == "active"
    invoice = by_type["invoice.paid"].data.object
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.parent is not None and invoice.parent.subscription_details is not None
    assert invoice.parent.subscription_details.subscription == sub.subscription.id
    assert invoice.status == "paid"


async def test_tampered_webhook_does_not_verify(
    client: stripe.StripeClient, web: httpx.AsyncClient, catalog: Catalog, receiver: WebhookReceiver
) -> None:
    await subscribe(client, web, catalog.price.id)
    await receiver.wait_for("checkout.session.completed")
    call = receiver.calls[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            call.body.replace(b"livemode", b"liveMode"),
            call.headers["stripe-signature"],
            "whsec_tests_0123456789abcdef",
        )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(call.body, call.headers["stripe-signature"], "whsec_other")


async def test_expired_session_cannot_be_paid(
    client: stripe.StripeClient, web: httpx.AsyncClient, catalog: Catalog, receiver: WebhookReceiver
) -> None:
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog.price.id}],
            "success_url": "https://app.example/ok",
        }
    )
    assert session.url is not None
    expired = await client.v1.checkout.sessions.expire_async(session.id)
    assert expired.status == "expired" and expired.url is None
    page = await web.post(session.url, data={})
    assert page.status_code == 410
    await receiver.wait_for("checkout.session.expired")
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.checkout.sessions.expire_async(session.id)


async def test_line_items_and_list(
    client: stripe.StripeClient, web: httpx.AsyncClient, catalog: Catalog
) -> None:
    sub = await subscribe(client, web, catalog.price.id)
    items = await client.v1.checkout.sessions.line_items.list_async(sub.session.id)
    assert [i.price.id for i in items.data] == [catalog.price.id]
    assert items.data[0].quantity is None
    listed = await client.v1.checkout.sessions.list_async(params={"customer": sub.customer})
    assert [s.id for s in listed.data] == [sub.session.id]
    assert listed.url == "/v1/checkout/sessions"
