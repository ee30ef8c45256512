"""``GET /v1/limits`` and ``PUT /v1/limits`` (CONTRACT §7) through the HTTP surface, on the
backend under test, with the price read from the emulator through the real SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import stripe
from sqlmodel import col, select

from meterapi import cli
from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.metering.limits import MAX_SPEND_CAP
from meterapi.models import OutboundEvent
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.admin_support import ADMIN, ADMIN_TOKEN, call_paid, eventually
from tests.integration.gateway_support import paying_customer
from tests.integration.keys_support import headers
from tests.integration.servers import service_env

THRESHOLDS = [50, 80, 100]


@pytest.fixture
def settings(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Settings:
    return stripe_settings(
        db_url, stripe_emulator, stripe_price, admin_token=ADMIN_TOKEN, rate_limit="100/second"
    )


async def _limits(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await client.get("/v1/limits", headers=headers(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _put(client: httpx.AsyncClient, key: str, body: Any) -> httpx.Response:
    return await client.put("/v1/limits", headers=headers(key), json=body)


async def test_read_set_change_and_clear_the_cap(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    assert await _limits(client, payer.key) == {
        "rate_limit": "100/second",
        "monthly_spend_cap": None,
        "spent_this_period": {"amount": 0, "currency": "usd"},
        "alert_thresholds": THRESHOLDS,
        "warning": None,
        "can_change": True,
    }
    # 3 units at the price's 0.5 cents: 1.5, rounded as an invoice line is.
    await call_paid(client, payer.key, 3)
    assert (await _limits(client, payer.key))["spent_this_period"] == {
        "amount": 2,
        "currency": "usd",
    }

    put = await _put(client, payer.key, {"monthly_spend_cap": {"amount": 5000}})
    assert put.status_code == 200, put.text
    assert put.json()["monthly_spend_cap"] == {"amount": 5000, "currency": "usd"}
    assert put.json()["spent_this_period"]["amount"] == 2
    assert (await _limits(client, payer.key))["monthly_spend_cap"]["amount"] == 5000

    changed = await _put(client, payer.key, {"monthly_spend_cap": {"amount": 0}})
    assert changed.status_code == 200 and changed.json()["monthly_spend_cap"]["amount"] == 0
    cleared = await _put(client, payer.key, {"monthly_spend_cap": None})
    assert cleared.status_code == 200 and cleared.json()["monthly_spend_cap"] is None
    assert (await _limits(client, payer.key))["monthly_spend_cap"] is None
    top = await _put(client, payer.key, {"monthly_spend_cap": {"amount": MAX_SPEND_CAP}})
    assert top.status_code == 200 and top.json()["monthly_spend_cap"]["amount"] == MAX_SPEND_CAP


async def test_the_operator_sees_the_customers_own_view(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    await call_paid(client, payer.key, 5)
    assert (await _put(client, payer.key, {"monthly_spend_cap": {"amount": 1234}})).is_success
    own = await _limits(client, payer.key)
    detail = await client.get(f"/admin/v1/customers/{payer.customer}", headers=ADMIN)
    assert detail.status_code == 200, detail.text
    operator = detail.json()["limits"]
    assert operator.pop("rate_limit_overridden") is False
    assert own.pop("can_change") is True
    assert operator == own
    assert own["spent_this_period"] == {"amount": 3, "currency": "usd"}  # 2.5 rounds up

    # The operator's override shows on the customer's side; the customer's cap on the operator's.
    put = await client.put(
        f"/admin/v1/customers/{payer.customer}/limits",
        json={"rate_limit": "7/minute"},
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    seen = await _limits(client, payer.key)
    assert seen["rate_limit"] == "7/minute" and seen["monthly_spend_cap"]["amount"] == 1234
    assert "rate_limit_overridden" not in seen


@pytest.mark.parametrize(
    "body",
    [
        {"monthly_spend_cap": {"amount": True}},
        {"monthly_spend_cap": {"amount": 12.5}},
        {"monthly_spend_cap": {"amount": 100.0}},
        {"monthly_spend_cap": {"amount": "100"}},
        {"monthly_spend_cap": {"amount": -1}},
        {"monthly_spend_cap": {"amount": MAX_SPEND_CAP + 1}},
        {"monthly_spend_cap": {"amount": 10**30}},
        {"monthly_spend_cap": {"amount": None}},
        {"monthly_spend_cap": {}},
        {"monthly_spend_cap": {"amount": 100, "currency": "eur"}},
        {"monthly_spend_cap": 100},
        {"monthly_spend_cap": "100"},
        {"monthly_spend_cap": [100]},
        {},
        {"amount": 100},
        {"monthly_spend_cap": None, "rate_limit": "1000/second"},
        [],
        None,
        "monthly_spend_cap",
    ],
)
async def test_a_malformed_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient, body: Any
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    assert (await _put(client, payer.key, {"monthly_spend_cap": {"amount": 700}})).is_success
    refused = await _put(client, payer.key, body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "validation_error"
    assert refused.json()["error"]["message"]
    assert (await _limits(client, payer.key))["monthly_spend_cap"]["amount"] == 700


async def test_bytes_that_are_not_json_are_422(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    json_type = {**headers(payer.key), "Content-Type": "application/json"}
    for content in (b"{", b'{"monthly_spend_cap": {"amount": 1}', b"\xff\xfe", b""):
        response = await client.put("/v1/limits", headers=json_type, content=content)
        assert response.status_code == 422, (content, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    no_body = await client.put("/v1/limits", headers=headers(payer.key))
    assert no_body.status_code == 422
    assert (await _limits(client, payer.key))["monthly_spend_cap"] is None


async def test_a_rotated_key_reads_the_limits_but_cannot_change_them(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    assert (await _put(client, payer.key, {"monthly_spend_cap": {"amount": 900}})).is_success
    rotated = await client.post(f"/v1/keys/{payer.key_id}/rotate", headers=headers(payer.key))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["api_key"]

    seen = await _limits(client, payer.key)
    assert seen["monthly_spend_cap"]["amount"] == 900 and seen["can_change"] is False
    for body in ({"monthly_spend_cap": None}, {"monthly_spend_cap": {"amount": 10**6}}, {}):
        refused = await _put(client, payer.key, body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "key_rotated"
    assert (await _limits(client, new))["monthly_spend_cap"]["amount"] == 900
    assert (await _limits(client, new))["can_change"] is True
    assert (await _put(client, new, {"monthly_spend_cap": None})).status_code == 200
    assert (await _limits(client, payer.key))["monthly_spend_cap"] is None


async def test_only_the_callers_own_limits(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    alice = await paying_customer(db_url, stripe_sdk, email="alice@example.com")
    bob = await paying_customer(db_url, stripe_sdk, email="bob@example.com")
    await call_paid(client, alice.key, 4)
    assert (await _put(client, alice.key, {"monthly_spend_cap": {"amount": 300}})).is_success
    assert (await _limits(client, bob.key))["monthly_spend_cap"] is None
    assert (await _limits(client, bob.key))["spent_this_period"]["amount"] == 0
    assert (await _limits(client, alice.key))["spent_this_period"]["amount"] == 2

    for method in ("GET", "PUT"):
        missing = await client.request(method, "/v1/limits", json={"monthly_spend_cap": None})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        wrong = await client.request(
            method, "/v1/limits", headers=headers(alice.key + "x"), json={"monthly_spend_cap": None}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    in_query = await client.get("/v1/limits", params={"api_key": alice.key})
    assert in_query.status_code == 400
    assert (await client.delete("/v1/limits", headers=headers(alice.key))).status_code == 405
    assert (await _limits(client, alice.key))["monthly_spend_cap"]["amount"] == 300


async def test_an_unreadable_price_is_a_warning_not_an_error(
    client: httpx.AsyncClient,
    db_url: str,
    stripe_sdk: stripe.StripeClient,
    stripe_price: str,
    emulator_control: EmulatorControl,
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    await emulator_control.inject_fault(
        "error", f"/v1/prices/{stripe_price}", method="GET", status=500, count=None
    )
    seen = await _limits(client, payer.key)
    assert seen["spent_this_period"] is None and "price" in seen["warning"]
    put = await _put(client, payer.key, {"monthly_spend_cap": {"amount": 50}})
    assert put.status_code == 200, put.text
    assert put.json()["monthly_spend_cap"] == {"amount": 50, "currency": None}
    await emulator_control.clear_faults()
    seen = await _limits(client, payer.key)
    assert seen["spent_this_period"] == {"amount": 0, "currency": "usd"}
    assert seen["monthly_spend_cap"] == {"amount": 50, "currency": "usd"}
    assert seen["warning"] is None


async def test_the_openapi_document_describes_both_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    path = document["paths"]["/v1/limits"]
    for method in ("get", "put"):
        operation = path[method]
        assert operation["summary"] and operation["security"] == [{"ApiKey": []}]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/CustomerLimitsOut"}
    assert "403" in path["put"]["responses"] and "422" in path["put"]["responses"]
    schemas = document["components"]["schemas"]
    assert set(schemas["CustomerLimitsOut"]["required"]) >= {
        "rate_limit",
        "monthly_spend_cap",
        "spent_this_period",
        "alert_thresholds",
        "can_change",
    }
    body = path["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/LimitsPut"}
    assert schemas["LimitsPut"]["required"] == ["monthly_spend_cap"]
    assert schemas["LimitsPut"]["additionalProperties"] is False
    amount = schemas["SpendCapIn"]["properties"]["amount"]
    assert amount["type"] == "integer" and amount["minimum"] == 0


async def test_concurrent_changes_all_answer_and_one_wins(
    client: httpx.AsyncClient, db_url: str, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    amounts = [100 * (i + 1) for i in range(8)]
    answers = await asyncio.gather(
        *(_put(client, payer.key, {"monthly_spend_cap": {"amount": a}}) for a in amounts)
    )
    assert [a.status_code for a in answers] == [200] * len(amounts), [a.text for a in answers]
    assert (await _limits(client, payer.key))["monthly_spend_cap"]["amount"] in amounts


async def _threshold_events(db_url: str, stripe_customer: str) -> list[int]:
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            rows = await session.exec(
                select(OutboundEvent)
                .where(OutboundEvent.type == "usage.threshold_reached")
                .order_by(col(OutboundEvent.id))
            )
            payloads = [json.loads(row.payload)["data"] for row in rows.all()]
    finally:
        await engine.dispose()
    return [p["threshold_percent"] for p in payloads if p["customer_id"] == stripe_customer]


@pytest.mark.parametrize("who", ["customer", "operator", "command"])
async def test_a_cap_raised_at_once_after_reaching_it_still_announces_the_crossings(
    client: httpx.AsyncClient,
    db_url: str,
    stripe_sdk: stripe.StripeClient,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    monkeypatch: pytest.MonkeyPatch,
    who: str,
) -> None:
    # The background look comes up to a second after the usage; a cap raised within that
    # second must not swallow the 50/80/100 % crossings that did happen under the old cap.
    payer = await paying_customer(db_url, stripe_sdk)
    assert (await _put(client, payer.key, {"monthly_spend_cap": {"amount": 2}})).is_success
    for _ in range(10):  # 0.5 cents a unit, the spend rounded as an invoice line is
        response = await client.get("/v1/data", headers=headers(payer.key))
        if response.status_code != 200:
            break
    assert response.json()["error"]["code"] == "spend_cap_reached"
    raise_cap = {"monthly_spend_cap": {"amount": 1000}}
    if who == "customer":
        raised = await _put(client, payer.key, raise_cap)
        assert raised.status_code == 200, raised.text
    elif who == "operator":
        raised = await client.put(
            f"/admin/v1/customers/{payer.customer}/limits", headers=ADMIN, json=raise_cap
        )
        assert raised.status_code == 200, raised.text
    else:  # meterapi limits set
        for name, value in service_env(db_url, stripe_emulator, stripe_price).items():
            monkeypatch.setenv(name, value)
        command = ["limits", "set", "--customer", payer.customer, "--spend-cap", "1000"]
        assert await asyncio.to_thread(cli.main, command) == 0
    assert await _threshold_events(db_url, payer.customer) == [50, 80, 100]

    async def served() -> bool:
        return (await client.get("/v1/data", headers=headers(payer.key))).status_code == 200

    # The routes' change is seen by the very next request; the command's, from another
    # process, within a check-in of the service's cache (keys.invalidation).
    assert await eventually(served, timeout_s=5, what="access back after the raise")
