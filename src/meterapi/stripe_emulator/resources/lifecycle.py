"""Subscription state changes, each sending the events Stripe sends for it.

Shared by the API, the hosted pages and the control endpoints, so all three behave alike.
"""

from __future__ import annotations

import copy

from ..routing import Ctx
from ..state import JSON, add_months, new_id, now
from ..wire import StripeError
from .invoices import build_invoice, issue_invoice, mark_paid, open_invoices

STATUSES = ("active", "past_due", "unpaid", "canceled", "paused")


def period_end(start: int, recurring: JSON) -> int:
    count = int(recurring.get("interval_count") or 1)
    interval = recurring.get("interval", "month")
    if interval == "year":
        return add_months(start, 12 * count)
    if interval == "week":
        return start + 7 * 86400 * count
    if interval == "day":
        return start + 86400 * count
    return add_months(start, count)


def plan_of(price: JSON) -> JSON:
    """The legacy `plan` view of a recurring price that subscription items still carry."""
    recurring = price["recurring"]
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring["interval"],
        "interval_count": recurring["interval_count"],
        "livemode": False,
        "metadata": dict(price["metadata"]),
        "meter": recurring.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": recurring.get("trial_period_days"),
        "usage_type": recurring["usage_type"],
    }


def _item(subscription_id: str, price: JSON, quantity: int | None, start: int) -> JSON:
    metered = (price.get("recurring") or {}).get("usage_type") == "metered"
    item: JSON = {
        "id": new_id("si_", 14),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": start,
        "current_period_end": period_end(start, price["recurring"]),
        "current_period_start": start,
        "discounts": [],
        "metadata": {},
        "plan": plan_of(price),
        "price": copy.deepcopy(price),
        "subscription": subscription_id,
        "tax_rates": [],
    }
    if not metered:  # Stripe leaves `quantity` out of a metered item (it is not null)
        item["quantity"] = quantity or 1
    return item


def create_subscription(
    ctx: Ctx, *, customer_id: str, items: list[tuple[JSON, int | None]], metadata: JSON
) -> JSON:
    """An active subscription with a paid first invoice (usage starts at zero)."""
    start = now()
    subscription_id = new_id("sub_")
    subscription: JSON = {
        "id": subscription_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor": start,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"type": "flexible", "flexible": None, "updated_at": None},
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": start,
        "currency": items[0][0]["currency"],
        "customer": customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [_item(subscription_id, price, qty, start) for price, qty in items],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={subscription_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata,
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": None,
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": start,
        "status": "active",
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }
    invoice = build_invoice(
        ctx, subscription, start=start, end=start, billing_reason="subscription_create"
    )
    subscription["latest_invoice"] = invoice["id"]
    ctx.store.put("subscriptions", subscription)
    ctx.emit("customer.subscription.created", subscription)
    issue_invoice(ctx, invoice, pay=True)
    return subscription


def _require_live(subscription: JSON) -> None:
    if subscription["status"] == "canceled":
        raise StripeError(
            "A canceled subscription can only update its cancellation_details and metadata.",
            param="subscription",
        )


def _changed(ctx: Ctx, subscription: JSON, previous: JSON) -> None:
    ctx.emit("customer.subscription.updated", subscription, previous)


def cancel(ctx: Ctx, subscription: JSON, *, reason: str = "cancellation_requested") -> JSON:
    _require_live(subscription)
    moment = now()
    subscription["status"] = "canceled"
    subscription["canceled_at"] = subscription["ended_at"] = moment
    subscription["cancellation_details"]["reason"] = reason
    ctx.emit("customer.subscription.deleted", subscription)
    return subscription


def set_cancel_at_period_end(ctx: Ctx, subscription: JSON, flag: bool) -> JSON:
    _require_live(subscription)
    previous = {
        "cancel_at_period_end": subscription["cancel_at_period_end"],
        "cancel_at": subscription["cancel_at"],
        "canceled_at": subscription["canceled_at"],
    }
    subscription["cancel_at_period_end"] = flag
    # Flexible billing mode shows a scheduled cancellation as `cancel_at` too.
    item = subscription["items"]["data"][0]
    subscription["cancel_at"] = item["current_period_end"] if flag else None
    subscription["canceled_at"] = now() if flag else None
    _changed(ctx, subscription, previous)
    return subscription


def pause(ctx: Ctx, subscription: JSON) -> JSON:
    if subscription["status"] not in ("active", "past_due", "unpaid"):
        raise StripeError(
            f"Subscriptions in status `{subscription['status']}` cannot be paused.",
            param="subscription",
        )
    previous = {"status": subscription["status"]}
    subscription["status"] = "paused"
    ctx.emit("customer.subscription.paused", subscription)
    _changed(ctx, subscription, previous)
    return subscription


def resume(ctx: Ctx, subscription: JSON) -> JSON:
    if subscription["status"] != "paused":
        raise StripeError("Only paused subscriptions can be resumed.", param="subscription")
    # Resuming restarts the billing cycle now, as `billing_cycle_anchor=now` (the default) does.
    start = now()
    previous = {"status": "paused", "items": copy.deepcopy(subscription["items"])}
    for item in subscription["items"]["data"]:
        item["current_period_start"] = start
        item["current_period_end"] = period_end(start, item["price"]["recurring"])
    subscription["billing_cycle_anchor"] = start
    subscription["status"] = "active"
    ctx.emit("customer.subscription.resumed", subscription)
    _changed(ctx, subscription, previous)
    return subscription


def close_period(ctx: Ctx, subscription: JSON, *, pay: bool = True, end: int | None = None) -> JSON:
    """End the current period at `end` (default: now + 1 s, so usage sent up to now is in it),
    invoice its usage, and start the next period — or end the subscription if it was set to."""
    _require_live(subscription)
    items = subscription["items"]["data"]
    start = items[0]["current_period_start"]
    close = now() + 1 if end is None else end
    if close <= start:
        raise StripeError("The period end must be after the period start.", param="end")
    invoice = build_invoice(
        ctx, subscription, start=start, end=close, billing_reason="subscription_cycle"
    )
    previous: JSON = {"items": copy.deepcopy(subscription["items"])}
    ending = subscription["cancel_at_period_end"] or (
        subscription["cancel_at"] is not None and subscription["cancel_at"] <= close
    )
    if not ending:
        for item in items:
            item["current_period_start"] = close
            item["current_period_end"] = period_end(close, item["price"]["recurring"])
    subscription["latest_invoice"] = invoice["id"]
    issue_invoice(ctx, invoice, pay=pay)
    if ending:
        cancel(ctx, subscription)
        return invoice
    if not pay and subscription["status"] == "active":
        previous["status"] = "active"
        subscription["status"] = "past_due"
    previous["latest_invoice"] = None
    _changed(ctx, subscription, previous)
    return invoice


def set_status(ctx: Ctx, subscription: JSON, status: str) -> JSON:
    """Move to a status by the path Stripe would take there, with the same events."""
    current = subscription["status"]
    if status not in STATUSES:
        raise StripeError(f"Invalid status: {status}. Use one of {', '.join(STATUSES)}.")
    if status == current:
        return subscription
    if status == "canceled":
        return cancel(ctx, subscription)
    if status == "paused":
        return pause(ctx, subscription)
    _require_live(subscription)
    if status == "past_due":
        # A renewal whose payment fails: the period closes and its invoice stays open.
        if current != "active":
            _simple_change(ctx, subscription, status)
        else:
            close_period(ctx, subscription, pay=False)
        return subscription
    if status == "active" and current == "paused":
        return resume(ctx, subscription)
    if status == "active":
        for invoice in open_invoices(ctx, subscription["id"]):
            mark_paid(ctx, invoice)
    _simple_change(ctx, subscription, status)
    return subscription


def _simple_change(ctx: Ctx, subscription: JSON, status: str) -> None:
    previous = {"status": subscription["status"]}
    subscription["status"] = status
    _changed(ctx, subscription, previous)
