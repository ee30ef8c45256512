"""Metering through the HTTP API: what is billable, the usage view, and failure modes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import stripe
from fastapi import APIRouter, FastAPI

from meterapi import PaidCaller, Usage
from meterapi.stripe_emulator import EmulatorControl
from tests.integration import internals
from tests.integration.keys_support import Seeder, headers, wrong_key
from tests.integration.totals import ledger_total
from tests.metrics_support import sample


@pytest.fixture
async def subscriber(
    seed: Seeder,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
    stripe_price: str,
) -> tuple[str, str]:
    """A customer who paid through Checkout in the emulator, with a key: (cus id, key)."""
    sdk, control = stripe_sdk, emulator_control
    checkout = await sdk.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": stripe_price}],
            "success_url": "http://127.0.0.1/ok?session_id={CHECKOUT_SESSION_ID}",
        }
    )
    await control.complete_checkout(checkout.id, email="buyer@example.com")
    done = await sdk.v1.checkout.sessions.retrieve_async(checkout.id)
    assert isinstance(done.customer, str) and isinstance(done.subscription, str)
    customer_id = await seed.customer(
        stripe_customer_id=done.customer, subscription_id=done.subscription
    )
    _key, plaintext = await seed.key(customer_id)
    return done.customer, plaintext


async def test_only_successful_calls_are_billed(
    app: FastAPI,
    client: httpx.AsyncClient,
    subscriber: tuple[str, str],
    emulator_control: EmulatorControl,
    db_url: str,
) -> None:
    cus, key = subscriber
    for _ in range(5):
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    refused = [
        await client.get("/v1/data"),
        await client.get("/v1/data", headers=headers(wrong_key(key))),
        await client.get("/v1/data", headers=headers(key), params={"api_key": key}),
        await client.get("/v1/keys", headers=headers(key)),  # free
        await client.get("/v1/usage", headers=headers(key)),  # free; caches a preview of 0
    ]
    assert [r.status_code for r in refused] == [401, 401, 400, 200, 200]
    assert await ledger_total(db_url) == 5

    assert await internals.flush_reports(app) == 0
    assert (await emulator_control.meter_events(customer=cus))["totals"][cus] == 5

    usage = (await client.get("/v1/usage", headers=headers(key))).json()
    assert (await client.get("/v1/usage", headers=headers(key))).json()["units"] == 5  # free
    assert usage["customer_id"] == cus
    assert (usage["units"], usage["reported_units"], usage["pending_units"]) == (5, 5, 0)
    today = datetime.now(UTC).date().isoformat()
    assert usage["by_day"] == [{"date": today, "units": 5}]
    start = datetime.fromisoformat(usage["period"]["start"])
    end = datetime.fromisoformat(usage["period"]["end"])
    assert start <= datetime.now(UTC) < end
    invoice = usage["upcoming_invoice"]
    # 5 units at 0.5 cent: Stripe rounds the line to whole cents.
    assert invoice is not None and invoice["currency"] == "usd"
    assert invoice["amount_due"] in (2, 3) and invoice["lines"][0]["quantity"] == 5
    assert usage["warning"] is None


async def test_usage_pending_before_the_reporter_runs(
    db_url: str,
    stripe_emulator: object,
    stripe_price: str,
    seed: Seeder,
) -> None:
    from meterapi.app import create_app
    from meterapi.stripe_emulator import EmulatorServer
    from tests.conftest import stripe_settings

    assert isinstance(stripe_emulator, EmulatorServer)
    app = create_app(stripe_settings(db_url, stripe_emulator, stripe_price, report_interval_s=600))
    async with app.router.lifespan_context(app):
        customer_id = await seed.customer(stripe_customer_id="cus_p")
        _key, key = await seed.key(customer_id)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(3):
                assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
            usage = (await client.get("/v1/usage", headers=headers(key))).json()
            metrics = (await client.get("/metrics")).text
    assert (usage["units"], usage["reported_units"], usage["pending_units"]) == (3, 0, 3)
    assert sample(metrics, "meterapi_usage_pending_units") == 3
    age = sample(metrics, "meterapi_usage_oldest_unreported_age_seconds")
    assert age is not None and 0 < age < 60


async def test_stripe_down_still_answers_usage(
    client: httpx.AsyncClient,
    subscriber: tuple[str, str],
    emulator_control: EmulatorControl,
) -> None:
    _cus, key = subscriber
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    await emulator_control.inject_fault(
        "error", path="/v1/invoices/create_preview", status=500, count=None
    )
    response = await client.get("/v1/usage", headers=headers(key))
    assert response.status_code == 200
    body = response.json()
    assert body["units"] == 1
    assert body["upcoming_invoice"] is None
    assert "unavailable" in body["warning"]


async def test_a_call_that_cannot_be_recorded_is_refused_not_served(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder, db_url: str
) -> None:
    customer_id = await seed.customer(stripe_customer_id="cus_x")
    _key, key = await seed.key(customer_id)
    await internals.break_ledger(app)  # the ledger is gone
    response = await client.get("/v1/data", headers=headers(key))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "usage_unavailable"
    assert await ledger_total(db_url) == 0


async def test_usage_is_only_ever_the_callers_own(client: httpx.AsyncClient, seed: Seeder) -> None:
    a = await seed.customer(stripe_customer_id="cus_a")
    b = await seed.customer(stripe_customer_id="cus_b")
    _ka, key_a = await seed.key(a)
    _kb, key_b = await seed.key(b)
    for _ in range(2):
        await client.get("/v1/data", headers=headers(key_a))
    await client.get("/v1/data", headers=headers(key_b))
    usage_a = (await client.get("/v1/usage", headers=headers(key_a))).json()
    usage_b = (await client.get("/v1/usage", headers=headers(key_b))).json()
    assert (usage_a["customer_id"], usage_a["units"]) == ("cus_a", 2)
    assert (usage_b["customer_id"], usage_b["units"]) == ("cus_b", 1)
    # No parameter selects another customer: unknown query parameters change nothing.
    sneaky = await client.get("/v1/usage", headers=headers(key_b), params={"customer": "cus_a"})
    assert sneaky.json()["units"] == 1


async def test_metrics_show_usage_and_latency(client: httpx.AsyncClient, seed: Seeder) -> None:
    customer_id = await seed.customer(stripe_customer_id="cus_m")
    _key, key = await seed.key(customer_id)
    await client.get("/v1/data", headers=headers(key))
    await client.get("/v1/data")
    text = (await client.get("/metrics")).text
    latency = "meterapi_request_duration_seconds_count"
    assert sample(text, latency, route="/v1/data", status="2xx") == 1
    assert sample(text, latency, route="/v1/data", status="4xx") == 1
    assert sample(text, "meterapi_usage_units_recorded_total") == 1
    assert sample(text, "meterapi_auth_outcomes_total", code="missing_api_key") == 1
    assert sample(text, "meterapi_auth_outcomes_total", code="ok") == 1


async def test_a_lapsed_customer_keeps_self_service_but_not_the_paid_api(
    client: httpx.AsyncClient, seed: Seeder, db_url: str
) -> None:
    customer_id = await seed.customer(stripe_customer_id="cus_lapsed", status="canceled")
    _key, key = await seed.key(customer_id)
    paid = await client.get("/v1/data", headers=headers(key))
    assert paid.status_code == 402
    assert paid.json()["error"]["code"] == "subscription_inactive"
    assert (await client.get("/v1/usage", headers=headers(key))).status_code == 200
    assert (await client.get("/v1/keys", headers=headers(key))).status_code == 200
    assert await ledger_total(db_url) == 0


async def test_paid_routes_cost_what_they_charge(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder, db_url: str
) -> None:
    """A route that charges nothing needs a paying caller all the same; a route with
    parameters goes through FastAPI's validation and is billed only when it answers 2xx."""
    router = APIRouter()

    @router.get("/t/included")
    async def included(caller: PaidCaller) -> dict[str, bool]:
        return {"ok": True}

    @router.get("/t/priced")
    async def priced(n: int, caller: PaidCaller, usage: Usage) -> dict[str, int | str]:
        usage.charge(2)
        return {"n": n, "customer_id": caller.customer_id}

    app.include_router(router)
    customer_id = await seed.customer(stripe_customer_id="cus_t")
    _key, key = await seed.key(customer_id)

    assert (await client.get("/t/included")).status_code == 401
    assert (await client.get("/t/included", headers=headers(key))).status_code == 200
    priced_ok = await client.get("/t/priced", params={"n": 5}, headers=headers(key))
    assert priced_ok.json() == {"n": 5, "customer_id": "cus_t"}
    invalid = await client.get("/t/priced", params={"n": "x"}, headers=headers(key))
    assert invalid.status_code == 422
    assert (await client.get("/t/priced", params={"n": 1})).status_code == 401
    assert await ledger_total(db_url) == 2
