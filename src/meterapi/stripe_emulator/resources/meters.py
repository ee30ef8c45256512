"""Billing meters, meter events (v1), event adjustments and event summaries."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON, new_id, now, public
from ..wire import StripeError, missing, opt_dict, opt_int, opt_str, req_int, req_str

PAST_WINDOW_S = 35 * 24 * 3600
FUTURE_WINDOW_S = 5 * 60
CANCEL_WINDOW_S = 24 * 3600


def create_meter(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    event_name = req_str(params, "event_name")
    formula = req_str(opt_dict(params, "default_aggregation"), "formula")
    if formula not in ("sum", "count", "last"):
        raise StripeError(
            f"Invalid default_aggregation[formula]: {formula}",
            param="default_aggregation[formula]",
        )
    # An event_name can belong to only one meter.
    for other in ctx.store.table("meters").values():
        if other["event_name"] == event_name:
            raise StripeError(
                f"A meter with event_name `{event_name}` already exists: {other['id']}.",
                param="event_name",
            )
    mapping = opt_dict(params, "customer_mapping")
    value_key = opt_str(opt_dict(params, "value_settings"), "event_payload_key") or "value"
    created = now()
    meter = ctx.store.put(
        "meters",
        {
            "id": new_id("mtr_test_", 32),
            "object": "billing.meter",
            "created": created,
            "customer_mapping": {
                "event_payload_key": opt_str(mapping, "event_payload_key") or "stripe_customer_id",
                "type": opt_str(mapping, "type") or "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": req_str(params, "display_name"),
            "event_name": event_name,
            "event_time_window": opt_str(params, "event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": created,
            "value_settings": {"event_payload_key": value_key},
        },
    )
    return expand(ctx.store, meter, params)


def get_meter(ctx: Ctx, meter_id: str) -> JSON:
    meter = ctx.store.get("meters", meter_id)
    if meter is None:
        raise missing("billing.meter", meter_id)
    return meter


def retrieve_meter(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return expand(ctx.store, get_meter(ctx, path["id"]), params)


def update_meter(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    meter = get_meter(ctx, path["id"])
    if opt_str(params, "display_name") is not None:
        meter["display_name"] = params["display_name"]
        meter["updated"] = now()
    return expand(ctx.store, meter, params)


def _set_meter_status(ctx: Ctx, params: JSON, meter_id: str, active: bool) -> JSON:
    meter = get_meter(ctx, meter_id)
    meter["status"] = "active" if active else "inactive"
    meter["status_transitions"]["deactivated_at"] = None if active else now()
    meter["updated"] = now()
    return expand(ctx.store, meter, params)


def deactivate_meter(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return _set_meter_status(ctx, params, path["id"], active=False)


def reactivate_meter(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    return _set_meter_status(ctx, params, path["id"], active=True)


def list_meters(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    status = opt_str(params, "status")
    items = [
        m
        for m in newest_first(ctx.store.table("meters"))
        if status is None or m["status"] == status
    ]
    return paginate(items, params, "/v1/billing/meters")


def active_meter_for(ctx: Ctx, event_name: str) -> JSON:
    for meter in ctx.store.table("meters").values():
        if meter["event_name"] == event_name and meter["status"] == "active":
            return meter
    raise StripeError(
        f"No active meter was found for event_name `{event_name}`.",
        code="resource_missing",
        param="event_name",
    )


def record_meter_event(
    ctx: Ctx, *, event_name: str, payload: JSON, identifier: str | None, timestamp: int | None
) -> JSON:
    """Validate one meter event as Stripe does synchronously, then store it."""
    meter = active_meter_for(ctx, event_name)
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    customer_id = opt_str(payload, customer_key)
    if customer_id is None:
        raise StripeError(
            f"Missing required param: payload[{customer_key}].",
            code="parameter_missing",
            param=f"payload[{customer_key}]",
        )
    customer = ctx.store.get("customers", customer_id)
    if customer is None or customer.get("deleted"):
        raise missing("customer", customer_id, f"payload[{customer_key}]")
    value = _event_value(payload, value_key, meter["default_aggregation"]["formula"])
    current = now()
    ts = current if timestamp is None else timestamp
    if ts < current - PAST_WINDOW_S or ts > current + FUTURE_WINDOW_S:
        raise StripeError(
            "Timestamp must be within the past 35 days and no more than 5 minutes in the future.",
            param="timestamp",
        )
    identifier = identifier or str(uuid.uuid4())
    if identifier in ctx.store.meter_event_index:
        raise StripeError(
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    event: JSON = {
        "object": "billing.meter_event",
        "created": current,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": {str(k): str(v) for k, v in payload.items()},
        "timestamp": ts,
        "_emulator": {  # private bookkeeping, stripped from responses
            "meter": meter["id"],
            "customer": customer_id,
            "value": str(value),
            "canceled": False,
        },
    }
    ctx.store.add_meter_event(event)
    return event


def _event_value(payload: JSON, value_key: str, formula: str) -> Decimal:
    raw = payload.get(value_key)
    if raw is None or raw == "":
        if formula == "count":
            return Decimal(1)
        raise StripeError(
            f"Missing required param: payload[{value_key}].",
            code="parameter_missing",
            param=f"payload[{value_key}]",
        )
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise StripeError(
            f"Invalid value for payload[{value_key}]: must be a number.",
            param=f"payload[{value_key}]",
        ) from exc
    if not value.is_finite():
        raise StripeError(
            f"Invalid value for payload[{value_key}]: must be a number.",
            param=f"payload[{value_key}]",
        )
    return value


def wire_event(event: JSON) -> JSON:
    return public(event)


def create_meter_event(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    event = record_meter_event(
        ctx,
        event_name=req_str(params, "event_name"),
        payload=opt_dict(params, "payload"),
        identifier=opt_str(params, "identifier"),
        timestamp=opt_int(params, "timestamp"),
    )
    return wire_event(event)


def create_adjustment(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    event_name = req_str(params, "event_name")
    if (opt_str(params, "type") or "cancel") != "cancel":
        raise StripeError("Invalid type: must be `cancel`.", param="type")
    identifier = req_str(opt_dict(params, "cancel"), "identifier")
    cancel_meter_event(ctx, event_name, identifier)
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }


def cancel_meter_event(ctx: Ctx, event_name: str, identifier: str) -> None:
    # Stripe reports unknown identifiers asynchronously; refusing them here surfaces bugs sooner.
    event = ctx.store.meter_event_index.get(identifier)
    if event is None or event["event_name"] != event_name:
        raise StripeError(
            f"No meter event with identifier `{identifier}` was found for `{event_name}`.",
            param="cancel[identifier]",
        )
    if event["created"] < now() - CANCEL_WINDOW_S:
        raise StripeError(
            "Only meter events received in the last 24 hours can be canceled.",
            param="cancel[identifier]",
        )
    event["_emulator"]["canceled"] = True


def usage_events(ctx: Ctx, meter_id: str, customer_id: str, start: int, end: int) -> list[JSON]:
    """Live (not canceled) events of one meter and customer with timestamps in [start, end)."""
    return [
        e
        for e in ctx.store.meter_events
        if e["_emulator"]["meter"] == meter_id
        and e["_emulator"]["customer"] == customer_id
        and not e["_emulator"]["canceled"]
        and start <= e["timestamp"] < end
    ]


def aggregate(events: Iterable[JSON], formula: str) -> Decimal:
    items = list(events)
    if formula == "count":
        return Decimal(len(items))
    if formula == "last":
        if not items:
            return Decimal(0)
        latest = max(enumerate(items), key=lambda pair: (pair[1]["timestamp"], pair[0]))[1]
        return Decimal(latest["_emulator"]["value"])
    return sum((Decimal(e["_emulator"]["value"]) for e in items), Decimal(0))


def number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_WINDOWS = {"hour": 3600, "day": 86400}


def list_event_summaries(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    meter = get_meter(ctx, path["id"])
    customer_id = req_str(params, "customer")
    start, end = req_int(params, "start_time"), req_int(params, "end_time")
    window = opt_str(params, "value_grouping_window")
    step = _WINDOWS.get(window or "", 60)
    if window is not None and window not in _WINDOWS:
        raise StripeError(f"Invalid value_grouping_window: {window}", param="value_grouping_window")
    for name, value in (("start_time", start), ("end_time", end)):
        if value % step:
            unit = window or "minute"
            raise StripeError(f"{name} must be aligned to {unit} boundaries.", param=name)
    if end <= start:
        raise StripeError("end_time must be after start_time.", param="end_time")
    bounds = [(start, end)]
    if window is not None:
        bounds = [(a, min(a + step, end)) for a in range(start, end, step)]
    formula = meter["default_aggregation"]["formula"]
    summaries = [
        {
            "id": "mtrusg_"
            + hashlib.sha256(f"{meter['id']}:{customer_id}:{a}:{b}".encode()).hexdigest()[:24],
            "object": "billing.meter_event_summary",
            "aggregated_value": number(
                aggregate(usage_events(ctx, meter["id"], customer_id, a, b), formula)
            ),
            "end_time": b,
            "livemode": False,
            "meter": meter["id"],
            "start_time": a,
        }
        for a, b in reversed(bounds)
    ]
    return paginate(summaries, params, f"/v1/billing/meters/{meter['id']}/event_summaries")


ROUTES: list[Route] = [
    route("POST", "/v1/billing/meters", create_meter),
    route("GET", "/v1/billing/meters", list_meters),
    route("GET", "/v1/billing/meters/{id}", retrieve_meter),
    route("POST", "/v1/billing/meters/{id}", update_meter),
    route("POST", "/v1/billing/meters/{id}/deactivate", deactivate_meter),
    route("POST", "/v1/billing/meters/{id}/reactivate", reactivate_meter),
    route("GET", "/v1/billing/meters/{id}/event_summaries", list_event_summaries),
    route("POST", "/v1/billing/meter_events", create_meter_event),
    route("POST", "/v1/billing/meter_event_adjustments", create_adjustment),
]
