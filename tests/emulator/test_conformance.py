"""Conformance to Stripe's spec: every endpoint, through the real SDK, in a realistic flow.

Every response body, error body and webhook payload is validated against the bundled spec
(as bridged to the SDK's API version), and every endpoint refuses an undefined parameter.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
import stripe

from meterapi.stripe_emulator import EmulatorServer, openapi

from .conftest import SECRET_KEY, WebhookReceiver, make_catalog, subscribe
from .spec_check import event_problems, problems

Seen = list[tuple[str, str, int, Any]]


def _route(method: str, path: str) -> str:
    for op in openapi.operations():
        if op.method == method and op.pattern.match(path):
            return op.path
    raise AssertionError(f"{method} {path} is not a served route")


@pytest.fixture
async def recorded(emulator: EmulatorServer) -> Any:
    """A StripeClient whose every answer is kept as (method, route, status, body)."""
    seen: Seen = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        request = response.request
        path = request.url.path
        if not path.startswith("/_emulator"):
            seen.append(
                (
                    request.method,
                    _route(request.method, path),
                    response.status_code,
                    response.json() if response.content else None,
                )
            )

    http = stripe.HTTPXClient()
    http._client_async.event_hooks["response"].append(keep)
    client = stripe.StripeClient(
        SECRET_KEY,
        http_client=http,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
    )
    yield client, seen
    await http.close_async()


async def _flow(client: stripe.StripeClient, web: httpx.AsyncClient) -> str:
    v1 = client.v1
    catalog = await make_catalog(client)
    meter = catalog.meter
    await v1.billing.meters.list_async(params={"limit": 3})
    await v1.billing.meters.retrieve_async(meter.id)
    await v1.billing.meters.update_async(meter.id, params={"display_name": "Requests"})
    await v1.prices.list_async(params={"active": True, "expand": ["data.product"]})
    await v1.prices.retrieve_async(catalog.price.id)
    await v1.prices.update_async(catalog.price.id, params={"nickname": "metered"})
    product = await v1.products.create_async(params={"name": "Seats", "unit_label": "seat"})
    await v1.products.list_async()
    await v1.products.retrieve_async(product.id)
    licensed = await v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 900,
            "product": product.id,
            "recurring": {"interval": "month"},
            "lookup_key": "seats",
        }
    )
    done = await subscribe(client, web, catalog.price.id)
    customer = done.customer
    await v1.customers.retrieve_async(customer)
    await v1.customers.update_async(customer, params={"name": "Ada", "metadata": {"k": "v"}})
    await v1.customers.list_async(params={"email": "a@example.com"})
    now = int(time.time())
    await v1.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "identifier": "conf-1",
            "timestamp": now,
            "payload": {"stripe_customer_id": customer, "value": "3"},
        }
    )
    await v1.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "identifier": "conf-2",
            "payload": {"stripe_customer_id": customer, "value": "1"},
        }
    )
    await v1.billing.meter_event_adjustments.create_async(
        params={"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "conf-2"}}
    )
    start = now - now % 60
    await v1.billing.meters.event_summaries.list_async(
        meter.id, params={"customer": customer, "start_time": start, "end_time": start + 120}
    )
    session = await client.v2.billing.meter_event_session.create_async()
    await client.v2.billing.meter_events.create_async(
        params={
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": customer, "value": "2"},
            "identifier": "conf-v2",
        }
    )
    await client.v2.billing.meter_event_stream.create_async(
        params={
            "events": [
                {
                    "event_name": "api_requests",
                    "identifier": "conf-stream",
                    "payload": {"stripe_customer_id": customer, "value": "1"},
                }
            ]
        },
        options={"api_key": session.authentication_token},
    )
    sub = done.subscription
    await v1.subscriptions.retrieve_async(sub.id, params={"expand": ["latest_invoice"]})
    await v1.subscriptions.list_async(params={"customer": customer, "status": "all"})
    await v1.subscription_items.list_async(params={"subscription": sub.id})
    await v1.subscription_items.retrieve_async(sub["items"]["data"][0]["id"])
    await v1.invoices.create_preview_async(params={"customer": customer, "subscription": sub.id})
    invoices = await v1.invoices.list_async(params={"customer": customer})
    await v1.invoices.retrieve_async(invoices.data[0].id)
    await v1.subscriptions.update_async(sub.id, params={"cancel_at_period_end": True})
    await v1.subscriptions.update_async(sub.id, params={"cancel_at_period_end": False})
    await v1.subscriptions.pause_async(sub.id)
    await v1.subscriptions.resume_async(sub.id)
    await v1.checkout.sessions.list_async(params={"customer": customer})
    await v1.checkout.sessions.line_items.list_async(done.session.id)
    portal = await v1.billing_portal.sessions.create_async(
        params={"customer": customer, "return_url": "https://app.example/account"}
    )
    assert portal.url
    second = await v1.subscriptions.create_async(
        params={"customer": customer, "items": [{"price": licensed.id, "quantity": 2}]}
    )
    await v1.subscriptions.cancel_async(second.id)
    open_session = await v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": catalog.price.id}],
            "success_url": "https://app.example/ok",
            "customer_email": "b@example.com",
        }
    )
    await v1.checkout.sessions.retrieve_async(open_session.id)
    await v1.checkout.sessions.expire_async(open_session.id)
    await v1.billing.meters.deactivate_async(meter.id)
    await v1.billing.meters.reactivate_async(meter.id)
    events = await v1.events.list_async(params={"limit": 100})
    await v1.events.retrieve_async(events.data[0].id)
    other = await v1.customers.create_async(params={"email": "gone@example.com"})
    await v1.customers.delete_async(other.id)
    return customer


async def _errors(
    client: stripe.StripeClient, emulator: EmulatorServer, customer: str
) -> list[str]:
    """Stripe's own failures, each answered in Stripe's error shape; returns the codes seen."""
    v1 = client.v1
    calls: list[Any] = [
        lambda: v1.customers.retrieve_async("cus_missing"),
        lambda: v1.customers.list_async(params={"limit": "abc"}),  # type: ignore[typeddict-item]
        lambda: v1.billing.meters.create_async(params={"display_name": "x"}),  # type: ignore[typeddict-item]
        lambda: v1.checkout.sessions.create_async(params={"mode": "bogus"}),  # type: ignore[typeddict-item]
        lambda: v1.billing.meter_events.create_async(
            params={
                "event_name": "api_requests",
                "identifier": "conf-1",
                "payload": {"stripe_customer_id": "cus_x", "value": "1"},
            }
        ),
        lambda: v1.prices.create_async(
            params={"currency": "usd", "unit_amount": 5, "tax_behavior": ""}  # type: ignore[typeddict-item]
        ),
        lambda: v1.prices.create_async(
            params={"currency": "usd", "recurring": {"interval": "month", "x": "1"}}  # type: ignore[typeddict-unknown-key]
        ),
        lambda: v1.customers.create_async(params={"email": "b@example.com"}, options=same_key),
    ]
    same_key: Any = {"idempotency_key": "conformance-key"}
    await v1.customers.create_async(params={"email": "a@example.com"}, options=same_key)
    codes = []
    for call in calls:
        with pytest.raises(stripe.StripeError) as caught:
            await call()
        codes.append(caught.value.code or "(none)")
    # A repeated meter event identifier: refused, not to be retried, and with no error code.
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        await v1.billing.meter_events.create_async(
            params={
                "event_name": "api_requests",
                "identifier": "conf-1",
                "payload": {"stripe_customer_id": customer, "value": "1"},
            }
        )
    assert duplicate.value.http_status == 400 and duplicate.value.code is None
    assert duplicate.value.user_message == "An event already exists with identifier conf-1."
    assert duplicate.value.headers is not None
    assert duplicate.value.headers["stripe-should-retry"] == "false"
    bad_key = stripe.StripeClient(
        "sk_live_nope_nope_nope",
        http_client=client._requestor._client,  # same recording HTTP client
        base_addresses={"api": emulator.url},
    )
    with pytest.raises(stripe.AuthenticationError) as auth:
        await bad_key.v1.customers.list_async()
    assert auth.value.http_status == 401 and auth.value.code is None
    return codes


async def test_every_endpoint_answers_in_the_spec_shape(
    recorded: Any, web: httpx.AsyncClient, emulator: EmulatorServer, receiver: WebhookReceiver
) -> None:
    client, seen = recorded
    customer = await _flow(client, web)
    codes = await _errors(client, emulator, customer)
    assert codes == [
        "resource_missing",
        "parameter_invalid_integer",
        "parameter_missing",
        "(none)",
        "resource_missing",
        "parameter_invalid_empty",
        "parameter_unknown",
        "(none)",
    ]
    await receiver.wait_for("customer.deleted", "checkout.session.expired")
    failures: list[str] = []
    for method, route, status, body in seen:
        key = f"op:{method} {route}" if status < 400 else "error"
        if body is None and route == "/v2/billing/meter_event_stream":
            continue
        failures += [f"{method} {route} {status}: {p}" for p in problems(key, body)]
    events = [r.body for r in receiver.calls]
    for raw in events:
        event = httpx.Response(200, content=raw).json()
        failures += [f"webhook {event['type']}: {p}" for p in event_problems(event)]
    assert not failures, "\n".join(sorted(set(failures)))
    served = {(op.method, op.path) for op in openapi.operations()}
    answered = {(m, r) for m, r, s, _ in seen if s < 400}
    assert served - answered == set()
    errors = [s for _, _, s, _ in seen if s >= 400]
    shapes = {t for _, _, _, body in seen for t in _object_types(body)}
    assert len(shapes) >= 15, shapes
    print(
        f"\nvalidated {len(answered)} endpoints, {len(seen) - len(errors)} responses "
        f"({len(shapes)} object types: {', '.join(sorted(shapes))}), "
        f"{len(errors)} error bodies, {len(events)} webhook payloads"
    )


def _object_types(node: Any) -> set[str]:
    if isinstance(node, list):
        return {t for v in node for t in _object_types(v)}
    if not isinstance(node, dict):
        return set()
    own = {node["object"]} if isinstance(node.get("object"), str) else set()
    return own.union(*(_object_types(v) for v in node.values()))


async def test_every_endpoint_refuses_an_undefined_parameter(emulator: EmulatorServer) -> None:
    auth = {"Authorization": f"Bearer {SECRET_KEY}"}
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10.0) as http:
        token = (await http.post("/v2/billing/meter_event_session", headers=auth, json={})).json()
        refused = 0
        for op in openapi.operations():
            path = re.sub(r"\{\w+\}", "x_1", op.path)
            headers = auth
            if op.path == "/v2/billing/meter_event_stream":
                headers = {"Authorization": f"Bearer {token['authentication_token']}"}
            if op.path.startswith("/v2/"):
                answer = await http.post(path, headers=headers, json={"no_such_param": "1"})
            elif op.method == "POST":
                answer = await http.post(path, headers=headers, data={"no_such_param": "1"})
            else:
                answer = await http.request(
                    op.method, path, headers=headers, params={"no_such_param": "1"}
                )
            error = answer.json()["error"]
            assert answer.status_code == 400, (op.method, op.path, error)
            assert error["code"] == "parameter_unknown"
            assert error["param"] == "no_such_param"
            assert error["message"] == "Received unknown parameter: no_such_param"
            assert problems("error", answer.json()) == []
            refused += 1
    assert refused == len(openapi.operations()) == 44


@pytest.mark.parametrize(
    ("path", "data", "param"),
    [
        (
            "/v1/prices",
            {"currency": "usd", "recurring[interval]": "month", "recurring[x]": "1"},
            "recurring[x]",
        ),
        (
            "/v1/checkout/sessions",
            {"mode": "subscription", "line_items[0][price]": "p", "line_items[0][x]": "1"},
            "line_items[0][x]",
        ),
        (
            "/v1/customers",
            {"metadata[ok]": "1", "invoice_settings[nope]": "1"},
            "invoice_settings[nope]",
        ),
    ],
)
async def test_nested_undefined_parameters_are_refused(
    emulator: EmulatorServer, path: str, data: dict[str, str], param: str
) -> None:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10.0) as http:
        answer = await http.post(path, data=data, headers={"Authorization": f"Bearer {SECRET_KEY}"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "parameter_unknown"
    assert answer.json()["error"]["param"] == param
