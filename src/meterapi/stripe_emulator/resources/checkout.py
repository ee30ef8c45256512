"""Checkout Sessions (hosted page mode) and Billing Portal sessions."""

from __future__ import annotations

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON, new_id, now
from ..wire import (
    StripeError,
    merge_metadata,
    missing,
    opt_dict,
    opt_int,
    opt_list,
    opt_str,
    req_str,
)
from . import lifecycle
from .catalog import get_customer, get_price, new_customer

SESSION_TTL_S = 24 * 3600
MODES = ("payment", "setup", "subscription")


def _line_items(ctx: Ctx, params: JSON, mode: str) -> list[JSON]:
    lines: list[JSON] = []
    for index, raw in enumerate(opt_list(params, "line_items")):
        entry = raw if isinstance(raw, dict) else {}
        price = get_price(ctx, req_str(entry, "price"), f"line_items[{index}][price]")
        if not price["active"]:
            raise StripeError(
                f"The price `{price['id']}` is not active.", param=f"line_items[{index}][price]"
            )
        recurring = price.get("recurring") or {}
        quantity = opt_int(entry, "quantity")
        if recurring.get("usage_type") == "metered" and quantity is not None:
            raise StripeError(
                "Quantity should not be defined when recurring.usage_type=metered",
                param=f"line_items[{index}][quantity]",
            )
        if mode == "payment" and recurring:
            raise StripeError(
                "You specified `payment` mode but passed a recurring price. Either switch to "
                "`subscription` mode or use only one-time prices.",
                param=f"line_items[{index}][price]",
            )
        lines.append({"price": price["id"], "quantity": quantity})
    if mode == "subscription" and not any(
        get_price(ctx, line["price"]).get("recurring") for line in lines
    ):
        raise StripeError(
            "You must provide at least one recurring price in `subscription` mode when using "
            "prices.",
            param="line_items",
        )
    if mode != "setup" and not lines:
        raise StripeError(
            "Missing required param: line_items.", code="parameter_missing", param="line_items"
        )
    return lines


def _amount(ctx: Ctx, lines: list[JSON]) -> int:
    # Metered prices bill in arrears, so they add nothing at checkout.
    total = 0
    for line in lines:
        price = get_price(ctx, line["price"])
        if (price.get("recurring") or {}).get("usage_type") != "metered":
            total += (price["unit_amount"] or 0) * (line["quantity"] or 1)
    return total


def create_session(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    mode = req_str(params, "mode")
    if mode not in MODES:
        raise StripeError(f"Invalid mode: must be one of {', '.join(MODES)}", param="mode")
    customer_id = opt_str(params, "customer")
    if customer_id is not None:
        get_customer(ctx, customer_id, "customer")
    ui_mode = opt_str(params, "ui_mode") or "hosted_page"
    if ui_mode != "hosted_page":
        raise StripeError(
            "The emulator only serves `ui_mode=hosted_page` sessions.", param="ui_mode"
        )
    lines = _line_items(ctx, params, mode)
    amount = _amount(ctx, lines)
    currency = get_price(ctx, lines[0]["price"])["currency"] if lines else None
    session_id = new_id("cs_test_a1", 56)
    created = now()
    session = ctx.store.put(
        "checkout_sessions",
        {
            "id": session_id,
            "object": "checkout.session",
            "adaptive_pricing": None,
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "billing_address_collection": None,
            "cancel_url": opt_str(params, "cancel_url"),
            "client_reference_id": opt_str(params, "client_reference_id"),
            "client_secret": None,
            "collected_information": None,
            "consent": None,
            "consent_collection": None,
            "created": created,
            "currency": currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer_id,
            "customer_creation": None if customer_id else "always",
            "customer_details": None,
            "customer_email": opt_str(params, "customer_email"),
            "discounts": [],
            "expires_at": opt_int(params, "expires_at") or created + SESSION_TTL_S,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": opt_str(params, "locale"),
            "metadata": merge_metadata({}, opt_dict(params, "metadata")),
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always",
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": opt_str(params, "success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": ui_mode,
            "url": f"{ctx.public_url}/checkout/{session_id}",
            "wallet_options": None,
            "_line_items": lines,
            "_subscription_metadata": merge_metadata(
                {}, opt_dict(opt_dict(params, "subscription_data"), "metadata")
            ),
        },
    )
    return expand(ctx.store, session, params)


def get_session(ctx: Ctx, session_id: str) -> JSON:
    session = ctx.store.get("checkout_sessions", session_id)
    if session is None:
        raise missing("checkout.session", session_id)
    if session["status"] == "open" and session["expires_at"] <= now():
        expire(ctx, session)
    return session


def expire(ctx: Ctx, session: JSON) -> None:
    session["status"] = "expired"
    session["url"] = None
    ctx.emit("checkout.session.expired", session)


def complete(ctx: Ctx, session: JSON, *, email: str | None) -> JSON:
    """What paying on the hosted page does: customer, subscription, first invoice, events."""
    if session["status"] != "open":
        raise StripeError(f"This Checkout Session is {session['status']}.")
    customer_id = session["customer"]
    if customer_id is None:
        customer_id = new_customer(
            ctx, email=email or session["customer_email"], name=None, metadata={}
        )["id"]
    customer = get_customer(ctx, customer_id)
    if session["mode"] == "subscription":
        items = [
            (get_price(ctx, line["price"]), line["quantity"]) for line in session["_line_items"]
        ]
        subscription = lifecycle.create_subscription(
            ctx,
            customer_id=customer_id,
            items=[(p, q) for p, q in items if p.get("recurring")],
            metadata=dict(session["_subscription_metadata"]),
        )
        session["subscription"] = subscription["id"]
        session["invoice"] = subscription["latest_invoice"]
    session.update(
        status="complete",
        payment_status="paid" if session["mode"] != "setup" else "no_payment_required",
        customer=customer_id,
        url=None,
        customer_details={
            "address": None,
            "email": customer["email"],
            "name": customer["name"],
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
    )
    ctx.emit("checkout.session.completed", session)
    return session


def retrieve_session(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, get_session(ctx, path["id"]), params)


def expire_session(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    session = get_session(ctx, path["id"])
    if session["status"] != "open":
        raise StripeError(
            f'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout '
            f'Session has a status of "{session["status"]}".',
        )
    expire(ctx, session)
    return expand(ctx.store, session, params)


def list_sessions(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer, subscription = opt_str(params, "customer"), opt_str(params, "subscription")
    status = opt_str(params, "status")
    items = [
        s
        for s in newest_first(ctx.store.table("checkout_sessions"))
        if (customer is None or s["customer"] == customer)
        and (subscription is None or s["subscription"] == subscription)
        and (status is None or s["status"] == status)
    ]
    return paginate(items, params, "/v1/checkout/sessions")


def list_session_line_items(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    session = get_session(ctx, path["id"])
    items = []
    for line in session["_line_items"]:
        price = get_price(ctx, line["price"])
        product = ctx.store.get("products", price["product"]) or {"name": None}
        metered = (price.get("recurring") or {}).get("usage_type") == "metered"
        amount = 0 if metered else (price["unit_amount"] or 0) * (line["quantity"] or 1)
        items.append(
            {
                "id": "li_" + line["price"][6:],
                "object": "item",
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": price["currency"],
                "description": product["name"],
                "price": price,
                "quantity": None if metered else (line["quantity"] or 1),
            }
        )
    return paginate(items, params, f"/v1/checkout/sessions/{session['id']}/line_items")


def create_portal_session(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer = get_customer(ctx, req_str(params, "customer"), "customer")
    session_id = new_id("bps_")
    session = ctx.store.put(
        "portal_sessions",
        {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": opt_str(params, "configuration") or "bpc_emulator_default",
            "created": now(),
            "customer": customer["id"],
            "flow": None,
            "livemode": False,
            "locale": opt_str(params, "locale"),
            "on_behalf_of": None,
            "return_url": opt_str(params, "return_url"),
            "url": f"{ctx.public_url}/portal/{session_id}",
        },
    )
    return expand(ctx.store, session, params)


ROUTES: list[Route] = [
    route("POST", "/v1/checkout/sessions", create_session),
    route("GET", "/v1/checkout/sessions", list_sessions),
    route("GET", "/v1/checkout/sessions/{id}", retrieve_session),
    route("POST", "/v1/checkout/sessions/{id}/expire", expire_session),
    route("GET", "/v1/checkout/sessions/{id}/line_items", list_session_line_items),
    route("POST", "/v1/billing_portal/sessions", create_portal_session),
]
