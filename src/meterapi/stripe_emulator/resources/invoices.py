"""Invoices: the ones subscriptions produce, and `POST /v1/invoices/create_preview`."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON, new_id, now
from ..wire import StripeError, missing, opt_str
from .meters import aggregate, usage_events


def line_amount(quantity: Decimal, unit_amount_decimal: str) -> int:
    """Quantity times unit price in cents, rounded to a whole cent (halves up)."""
    exact = quantity * Decimal(unit_amount_decimal)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def item_quantity(ctx: Ctx, subscription: JSON, item: JSON, start: int, end: int) -> Decimal:
    """Metered items: the meter's aggregate for the customer in [start, end). Licensed: quantity."""
    price = item["price"]
    recurring = price.get("recurring") or {}
    if recurring.get("usage_type") != "metered":
        return Decimal(item.get("quantity") or 1)
    meter = ctx.store.get("meters", recurring["meter"])
    if meter is None:
        return Decimal(0)
    events = usage_events(ctx, meter["id"], subscription["customer"], start, end)
    return aggregate(events, meter["default_aggregation"]["formula"])


def _dollars(cents_decimal: str) -> str:
    text = format(Decimal(cents_decimal) / 100, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
        whole, _, frac = text.partition(".")
        text = whole + "." + frac.ljust(2, "0") if frac else whole
    return text


def build_line(
    ctx: Ctx, invoice_id: str, subscription: JSON, item: JSON, start: int, end: int, *, tmp: bool
) -> JSON:
    price = item["price"]
    quantity = item_quantity(ctx, subscription, item, start, end)
    amount = line_amount(quantity, price["unit_amount_decimal"])
    product = ctx.store.get("products", price["product"]) or {"name": price["product"]}
    recurring = price.get("recurring") or {}
    rate = f"${_dollars(price['unit_amount_decimal'])}"
    # A metered line's quantity is usage: its price is per unit, not per period.
    if recurring.get("usage_type") == "metered":
        rate = f"metered usage at {rate} per unit"
    else:
        rate = f"at {rate} / {recurring.get('interval', 'month')}"
    whole = int(quantity.to_integral_value(rounding=ROUND_HALF_UP))
    return {
        "id": new_id("il_tmp_" if tmp else "il_"),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": f"{quantity.normalize():f} \u00d7 {product['name']} ({rate})",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": subscription["id"],
                "subscription_item": item["id"],
            },
        },
        "period": {"start": start, "end": end},
        "pretax_credit_amounts": [],
        "pricing": {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": whole,
        "quantity_decimal": f"{quantity.normalize():f}",
        "subscription": subscription["id"],
        "subtotal": amount,
        "taxes": [],
    }


def build_invoice(
    ctx: Ctx,
    subscription: JSON,
    *,
    start: int,
    end: int,
    billing_reason: str,
    preview: bool = False,
) -> JSON:
    """A draft invoice for one subscription whose lines cover [start, end)."""
    invoice_id = new_id("upcoming_in_" if preview else "in_")
    lines = [
        build_line(ctx, invoice_id, subscription, item, start, end, tmp=preview)
        for item in subscription["items"]["data"]
    ]
    total = sum(line["amount"] for line in lines)
    customer = ctx.store.get("customers", subscription["customer"]) or {}
    created = now()
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "meterapi emulator",
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_paid_off_stripe": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": not preview,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": subscription["currency"],
        "customer": subscription["customer"],
        "customer_email": customer.get("email"),
        "customer_name": customer.get("name"),
        "default_payment_method": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(subscription["metadata"]),
                "subscription": subscription["id"],
                "subscription_proration_date": None,
            },
        },
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": end,
        "period_start": start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "starting_balance": 0,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def issue_invoice(ctx: Ctx, invoice: JSON, *, pay: bool) -> JSON:
    """Store, finalize and attempt payment, sending the events Stripe sends along the way."""
    ctx.store.put("invoices", invoice)
    ctx.emit("invoice.created", invoice)
    invoice["status"] = "open"
    invoice["number"] = f"{invoice['id'][3:11].upper()}-0001"
    invoice["status_transitions"]["finalized_at"] = invoice["effective_at"] = now()
    ctx.emit("invoice.finalized", invoice, {"status": "draft"})
    if pay:
        mark_paid(ctx, invoice)
    else:
        invoice["attempted"] = True
        invoice["attempt_count"] += 1
        invoice["next_payment_attempt"] = now() + 3 * 24 * 3600
        ctx.emit("invoice.payment_failed", invoice)
    return invoice


def mark_paid(ctx: Ctx, invoice: JSON) -> None:
    invoice["attempted"] = True
    invoice["attempt_count"] += 1
    invoice["status"] = "paid"
    invoice["amount_paid"] = invoice["amount_due"]
    invoice["amount_remaining"] = 0
    invoice["next_payment_attempt"] = None
    invoice["status_transitions"]["paid_at"] = now()
    ctx.emit("invoice.paid", invoice)
    ctx.emit("invoice.payment_succeeded", invoice)


def open_invoices(ctx: Ctx, subscription_id: str) -> list[JSON]:
    return [
        i
        for i in ctx.store.table("invoices").values()
        if i["status"] == "open"
        and i["parent"]["subscription_details"]["subscription"] == subscription_id
    ]


def preview_subscription(ctx: Ctx, params: JSON) -> JSON:
    subscription_id = opt_str(params, "subscription")
    customer_id = opt_str(params, "customer")
    if customer_id is not None and ctx.store.get("customers", customer_id) is None:
        raise missing("customer", customer_id, "customer")
    if subscription_id is not None:
        subscription = ctx.store.get("subscriptions", subscription_id)
        if subscription is None:
            raise missing("subscription", subscription_id, "subscription")
        if customer_id is not None and subscription["customer"] != customer_id:
            raise StripeError(
                f"The subscription {subscription_id} does not belong to customer {customer_id}.",
                param="subscription",
            )
    elif customer_id is not None:
        # Convenience: with only a customer, preview their single live subscription.
        live = [
            s
            for s in ctx.store.table("subscriptions").values()
            if s["customer"] == customer_id and s["status"] != "canceled"
        ]
        if len(live) != 1:
            raise StripeError(
                f"No upcoming invoices for customer: {customer_id}",
                code="invoice_upcoming_none",
            )
        subscription = live[0]
    else:
        raise StripeError(
            "Missing required param: customer or subscription.",
            code="parameter_missing",
            param="customer",
        )
    if subscription["status"] == "canceled":
        raise StripeError(
            f"No upcoming invoices for customer: {subscription['customer']}",
            code="invoice_upcoming_none",
        )
    return subscription


def create_preview(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    subscription = preview_subscription(ctx, params)
    item = subscription["items"]["data"][0]
    invoice = build_invoice(
        ctx,
        subscription,
        start=item["current_period_start"],
        end=item["current_period_end"],
        billing_reason="subscription_cycle",
        preview=True,
    )
    return expand(ctx.store, invoice, params)


def retrieve_invoice(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    invoice = ctx.store.get("invoices", path["id"])
    if invoice is None:
        raise missing("invoice", path["id"])
    return expand(ctx.store, invoice, params)


def list_invoices(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer, subscription = opt_str(params, "customer"), opt_str(params, "subscription")
    status = opt_str(params, "status")
    items = [
        i
        for i in newest_first(ctx.store.table("invoices"))
        if (customer is None or i["customer"] == customer)
        and (
            subscription is None
            or i["parent"]["subscription_details"]["subscription"] == subscription
        )
        and (status is None or i["status"] == status)
    ]
    return paginate(items, params, "/v1/invoices")


ROUTES: list[Route] = [
    route("POST", "/v1/invoices/create_preview", create_preview),
    route("GET", "/v1/invoices", list_invoices),
    route("GET", "/v1/invoices/{id}", retrieve_invoice),
]
