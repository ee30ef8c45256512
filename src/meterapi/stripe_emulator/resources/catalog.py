"""Customers, products and prices."""

from __future__ import annotations

from decimal import Decimal

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON, new_id, now
from ..wire import (
    StripeError,
    merge_metadata,
    missing,
    opt_bool,
    opt_decimal,
    opt_dict,
    opt_int,
    opt_list,
    opt_str,
    req_str,
)


def new_customer(ctx: Ctx, *, email: str | None, name: str | None, metadata: JSON) -> JSON:
    """Create a customer and send `customer.created` (Checkout uses this too)."""
    customer = ctx.store.put(
        "customers",
        {
            "id": new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": email,
            "invoice_prefix": new_id("", 8).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": metadata,
            "name": name,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        },
    )
    ctx.emit("customer.created", customer)
    return customer


def get_customer(ctx: Ctx, customer_id: str, param: str = "id") -> JSON:
    customer = ctx.store.get("customers", customer_id)
    if customer is None or customer.get("deleted"):
        raise missing("customer", customer_id, param)
    return customer


def create_customer(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer = new_customer(
        ctx,
        email=opt_str(params, "email"),
        name=opt_str(params, "name"),
        metadata=merge_metadata({}, opt_dict(params, "metadata")),
    )
    for field in ("description", "phone"):
        if opt_str(params, field) is not None:
            customer[field] = params[field]
    return expand(ctx.store, customer, params)


def retrieve_customer(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, get_customer(ctx, path["id"]), params)


def update_customer(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    customer = get_customer(ctx, path["id"])
    previous: JSON = {}
    for field in ("email", "name", "description", "phone"):
        if field in params:
            previous[field] = customer[field]
            customer[field] = opt_str(params, field)
    if "metadata" in params:
        previous["metadata"] = customer["metadata"]
        customer["metadata"] = merge_metadata(customer["metadata"], opt_dict(params, "metadata"))
    ctx.emit("customer.updated", customer, previous)
    return expand(ctx.store, customer, params)


def delete_customer(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    customer = get_customer(ctx, path["id"])
    customer["deleted"] = True
    ctx.emit("customer.deleted", customer)
    return {"id": customer["id"], "object": "customer", "deleted": True}


def list_customers(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    email = opt_str(params, "email")
    items = [
        c
        for c in newest_first(ctx.store.table("customers"))
        if not c.get("deleted") and (email is None or c["email"] == email)
    ]
    return paginate(items, params, "/v1/customers")


def create_product(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    product = _new_product(ctx, params)
    return expand(ctx.store, product, params)


def _new_product(ctx: Ctx, params: JSON) -> JSON:
    created = now()
    product = ctx.store.put(
        "products",
        {
            "id": opt_str(params, "id") or new_id("prod_", 14),
            "object": "product",
            "active": opt_bool(params, "active") is not False,
            "created": created,
            "default_price": None,
            "description": opt_str(params, "description"),
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": merge_metadata({}, opt_dict(params, "metadata")),
            "name": req_str(params, "name"),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": opt_str(params, "unit_label"),
            "updated": created,
            "url": None,
        },
    )
    ctx.emit("product.created", product)
    return product


def retrieve_product(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    product = ctx.store.get("products", path["id"])
    if product is None:
        raise missing("product", path["id"])
    return expand(ctx.store, product, params)


def list_products(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    active = opt_bool(params, "active")
    items = [
        p
        for p in newest_first(ctx.store.table("products"))
        if active is None or p["active"] == active
    ]
    return paginate(items, params, "/v1/products")


def create_price(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    currency = req_str(params, "currency").lower()
    product_id = opt_str(params, "product")
    if product_id is None:
        product_data = opt_dict(params, "product_data")
        if not product_data:
            raise StripeError(
                "You must specify either `product` or `product_data` when creating a price.",
                param="product",
            )
        product_id = _new_product(ctx, product_data)["id"]
    elif ctx.store.get("products", product_id) is None:
        raise missing("product", product_id, "product")
    unit_amount = opt_int(params, "unit_amount")
    unit_amount_decimal = opt_decimal(params, "unit_amount_decimal")
    if unit_amount is not None and unit_amount_decimal is not None:
        raise StripeError(
            "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
            param="unit_amount_decimal",
        )
    if unit_amount is None and unit_amount_decimal is None:
        raise StripeError(
            "Missing required param: unit_amount.", code="parameter_missing", param="unit_amount"
        )
    decimal_text = str(unit_amount) if unit_amount is not None else _plain(unit_amount_decimal)
    recurring = _recurring(ctx, opt_dict(params, "recurring"))
    lookup_key = opt_str(params, "lookup_key")
    if lookup_key is not None:
        _claim_lookup_key(ctx, lookup_key, transfer=opt_bool(params, "transfer_lookup_key"))
    price = ctx.store.put(
        "prices",
        {
            "id": new_id("price_"),
            "object": "price",
            "active": opt_bool(params, "active") is not False,
            "billing_scheme": "per_unit",
            "created": now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": merge_metadata({}, opt_dict(params, "metadata")),
            "nickname": opt_str(params, "nickname"),
            "product": product_id,
            "recurring": recurring,
            "tax_behavior": opt_str(params, "tax_behavior") or "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time" if recurring is None else "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": decimal_text,
        },
    )
    ctx.emit("price.created", price)
    return expand(ctx.store, price, params)


def _plain(number: Decimal | None) -> str:
    assert number is not None
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _recurring(ctx: Ctx, recurring: JSON) -> JSON | None:
    if not recurring:
        return None
    interval = req_str(recurring, "interval")
    if interval not in ("day", "week", "month", "year"):
        raise StripeError(f"Invalid recurring[interval]: {interval}", param="recurring[interval]")
    usage_type = opt_str(recurring, "usage_type") or "licensed"
    meter = opt_str(recurring, "meter")
    # Since 2025-03-31.basil a metered price must name a meter (legacy usage records are gone).
    if usage_type == "metered" and meter is None:
        raise StripeError(
            "A meter is required for prices with `recurring[usage_type]=metered`.",
            param="recurring[meter]",
        )
    if meter is not None and ctx.store.get("meters", meter) is None:
        raise missing("billing.meter", meter, "recurring[meter]")
    return {
        "interval": interval,
        "interval_count": opt_int(recurring, "interval_count") or 1,
        "meter": meter,
        "trial_period_days": opt_int(recurring, "trial_period_days"),
        "usage_type": usage_type,
    }


def _claim_lookup_key(ctx: Ctx, lookup_key: str, *, transfer: bool | None) -> None:
    for other in ctx.store.table("prices").values():
        if other["lookup_key"] == lookup_key:
            if not transfer:
                raise StripeError(
                    f"A price (`{other['id']}`) already uses that lookup key.",
                    param="lookup_key",
                )
            other["lookup_key"] = None


def get_price(ctx: Ctx, price_id: str, param: str = "id") -> JSON:
    price = ctx.store.get("prices", price_id)
    if price is None:
        raise missing("price", price_id, param)
    return price


def retrieve_price(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, get_price(ctx, path["id"]), params)


def update_price(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    price = get_price(ctx, path["id"])
    previous: JSON = {}
    active = opt_bool(params, "active")
    if active is not None:
        previous["active"], price["active"] = price["active"], active
    if "nickname" in params:
        previous["nickname"], price["nickname"] = price["nickname"], opt_str(params, "nickname")
    if "metadata" in params:
        previous["metadata"] = price["metadata"]
        price["metadata"] = merge_metadata(price["metadata"], opt_dict(params, "metadata"))
    ctx.emit("price.updated", price, previous)
    return expand(ctx.store, price, params)


def list_prices(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    product, active = opt_str(params, "product"), opt_bool(params, "active")
    lookup_keys = [str(k) for k in opt_list(params, "lookup_keys")]
    items = [
        p
        for p in newest_first(ctx.store.table("prices"))
        if (product is None or p["product"] == product)
        and (active is None or p["active"] == active)
        and (not lookup_keys or p["lookup_key"] in lookup_keys)
    ]
    return paginate(items, params, "/v1/prices")


ROUTES: list[Route] = [
    route("POST", "/v1/customers", create_customer),
    route("GET", "/v1/customers", list_customers),
    route("GET", "/v1/customers/{id}", retrieve_customer),
    route("POST", "/v1/customers/{id}", update_customer),
    route("DELETE", "/v1/customers/{id}", delete_customer),
    route("POST", "/v1/products", create_product),
    route("GET", "/v1/products", list_products),
    route("GET", "/v1/products/{id}", retrieve_product),
    route("POST", "/v1/prices", create_price),
    route("GET", "/v1/prices", list_prices),
    route("GET", "/v1/prices/{id}", retrieve_price),
    route("POST", "/v1/prices/{id}", update_price),
]
