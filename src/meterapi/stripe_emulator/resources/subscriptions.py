"""Subscriptions and subscription items over the API."""

from __future__ import annotations

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON, public
from ..wire import (
    StripeError,
    merge_metadata,
    missing,
    opt_bool,
    opt_dict,
    opt_int,
    opt_list,
    opt_str,
    req_str,
)
from . import lifecycle
from .catalog import get_customer, get_price


def get_subscription(ctx: Ctx, subscription_id: str, param: str = "id") -> JSON:
    subscription = ctx.store.get("subscriptions", subscription_id)
    if subscription is None:
        raise missing("subscription", subscription_id, param)
    return subscription


def create(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer_id = req_str(params, "customer")
    get_customer(ctx, customer_id, "customer")
    items: list[tuple[JSON, int | None]] = []
    for index, raw in enumerate(opt_list(params, "items")):
        entry = raw if isinstance(raw, dict) else {}
        price = get_price(ctx, req_str(entry, "price"), f"items[{index}][price]")
        recurring = price.get("recurring") or {}
        if not recurring:
            raise StripeError(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=f"items[{index}][price]",
            )
        quantity = opt_int(entry, "quantity")
        if quantity is not None and recurring.get("usage_type") == "metered":
            raise StripeError(
                "Quantity should not be defined when recurring.usage_type=metered",
                param=f"items[{index}][quantity]",
            )
        items.append((price, quantity))
    if not items:
        raise StripeError("Missing required param: items.", code="parameter_missing", param="items")
    subscription = lifecycle.create_subscription(
        ctx,
        customer_id=customer_id,
        items=items,
        metadata=merge_metadata({}, opt_dict(params, "metadata")),
    )
    return expand(ctx.store, subscription, params)


def retrieve(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, get_subscription(ctx, path["id"]), params)


def update(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    subscription = get_subscription(ctx, path["id"])
    flag = opt_bool(params, "cancel_at_period_end")
    if flag is not None and flag != subscription["cancel_at_period_end"]:
        lifecycle.set_cancel_at_period_end(ctx, subscription, flag)
    plain_changes: JSON = {}
    if "metadata" in params:
        plain_changes["metadata"] = subscription["metadata"]
        subscription["metadata"] = merge_metadata(
            subscription["metadata"], opt_dict(params, "metadata")
        )
    if "description" in params:
        plain_changes["description"] = subscription["description"]
        subscription["description"] = opt_str(params, "description")
    if "pause_collection" in params:
        plain_changes["pause_collection"] = subscription["pause_collection"]
        collection = opt_dict(params, "pause_collection")
        subscription["pause_collection"] = (
            {"behavior": req_str(collection, "behavior"), "resumes_at": None}
            if collection
            else None
        )
    if plain_changes:
        ctx.emit("customer.subscription.updated", subscription, plain_changes)
    return expand(ctx.store, subscription, params)


def cancel(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    subscription = get_subscription(ctx, path["id"])
    details = opt_dict(params, "cancellation_details")
    if details:
        subscription["cancellation_details"]["comment"] = opt_str(details, "comment")
        subscription["cancellation_details"]["feedback"] = opt_str(details, "feedback")
    lifecycle.cancel(ctx, subscription)
    return expand(ctx.store, subscription, params)


def pause(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, lifecycle.pause(ctx, get_subscription(ctx, path["id"])), params)


def resume(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, lifecycle.resume(ctx, get_subscription(ctx, path["id"])), params)


def list_subscriptions(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    customer, price = opt_str(params, "customer"), opt_str(params, "price")
    # Like Stripe, canceled subscriptions are listed only when asked for.
    status = opt_str(params, "status")
    items = [
        s
        for s in newest_first(ctx.store.table("subscriptions"))
        if (customer is None or s["customer"] == customer)
        and (price is None or any(i["price"]["id"] == price for i in s["items"]["data"]))
        and (
            (status is None and s["status"] != "canceled")
            or status == "all"
            or s["status"] == status
        )
    ]
    return paginate(items, params, "/v1/subscriptions")


def list_items(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    subscription = get_subscription(ctx, req_str(params, "subscription"), "subscription")
    return paginate(
        subscription["items"]["data"],
        params,
        f"/v1/subscription_items?subscription={subscription['id']}",
    )


def retrieve_item(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    for subscription in ctx.store.table("subscriptions").values():
        for item in subscription["items"]["data"]:
            if item["id"] == path["id"]:
                return expand(ctx.store, public(item), params)
    raise missing("subscription_item", path["id"])


ROUTES: list[Route] = [
    route("POST", "/v1/subscriptions", create),
    route("GET", "/v1/subscriptions", list_subscriptions),
    route("GET", "/v1/subscriptions/{id}", retrieve),
    route("POST", "/v1/subscriptions/{id}", update),
    route("DELETE", "/v1/subscriptions/{id}", cancel),
    route("POST", "/v1/subscriptions/{id}/pause", pause),
    route("POST", "/v1/subscriptions/{id}/resume", resume),
    route("GET", "/v1/subscription_items", list_items),
    route("GET", "/v1/subscription_items/{id}", retrieve_item),
]
