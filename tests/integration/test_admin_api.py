"""The operator API (CONTRACT §8) in process, on the backend under test, wired to the emulator."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI
from sqlmodel import select

from meterapi.app import create_app
from meterapi.billing.gateway import EMULATOR_WEBHOOK_SECRET, StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker, session_scope
from meterapi.models import CacheRevision, ProcessHeartbeat, ReportStatus, UsageReport, utcnow
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration import internals
from tests.integration.admin_support import (
    ADMIN,
    ADMIN_TOKEN,
    call_paid,
    eventually,
    failing_checkout_event,
    seed_customer,
    send_behind_our_back,
)
from tests.integration.billing_support import signed
from tests.integration.totals import stripe_total


@pytest.fixture
def settings(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Settings:
    """The suite's ``app`` and ``client``, with the operator API on (and a rate limit to show)."""
    return stripe_settings(
        db_url, stripe_emulator, stripe_price, admin_token=ADMIN_TOKEN, rate_limit="100/second"
    )


async def _customers(
    sessionmaker: Sessionmaker, sdk: stripe.StripeClient, settings: Settings, n: int
) -> list[tuple[str, str]]:
    return [
        await seed_customer(
            sessionmaker, sdk, email=f"c{i}@example.com", pepper=settings.pepper_bytes()
        )
        for i in range(n)
    ]


async def test_missing_or_wrong_token_is_401_in_the_error_shape(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-the-same-length-0123456789ab"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"X-API-Key": ADMIN_TOKEN},
    ):
        response = await client.get("/admin/v1/customers", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_admin_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/admin/v1/customers", headers=ADMIN)).status_code == 200
    assert (await client.get("/admin")).status_code == 200  # the page itself holds no data


async def test_without_a_token_everything_under_admin_is_404(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    app = create_app(stripe_settings(db_url, stripe_emulator, stripe_price))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path in [
                ("GET", "/admin"),
                ("GET", "/admin/assets/admin.js"),
                ("GET", "/admin/v1/customers"),
                ("POST", "/admin/v1/reports/1/retry"),
                ("PUT", "/admin/v1/customers/cus_x/limits"),
                ("GET", "/admin/v1/reconciliation"),
                ("GET", "/admin/v1/webhooks/outbound"),
                ("POST", "/admin/v1/webhooks/outbound/msg_0/retry"),
            ]:
                response = await client.request(method, path, headers=ADMIN)
                assert response.status_code == 404, (method, path)
                assert response.json()["error"]["code"] == "not_found"
            paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/admin")]


async def test_the_openapi_document_has_an_admin_tag_and_bearer_scheme(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["AdminToken"]
    assert scheme == {
        "type": "http",
        "scheme": "bearer",
        "description": scheme["description"],
    }
    operations = [
        op
        for path, item in document["paths"].items()
        if path.startswith("/admin/")
        for op in item.values()
    ]
    assert len(operations) == 11
    assert all(
        op["tags"] == ["admin"] and op["security"] == [{"AdminToken": []}] for op in operations
    )


async def test_customers_are_paged_with_status_access_usage_and_keys(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
) -> None:
    seeded = await _customers(sessionmaker, stripe_sdk, settings, 5)
    cancelled, _ = await seed_customer(
        sessionmaker, stripe_sdk, email="gone@example.com", status="canceled",
        pepper=settings.pepper_bytes(),
    )  # fmt: skip
    await call_paid(client, seeded[1][1], 3)

    seen: list[dict[str, Any]] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 2, **({"starting_after": after} if after else {})}
        page = (await client.get("/admin/v1/customers", params=params, headers=ADMIN)).json()
        pages += 1
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["customer_id"]
    assert pages == 3
    assert [c["customer_id"] for c in seen] == [cus for cus, _ in seeded] + [cancelled]
    by_id = {c["customer_id"]: c for c in seen}
    assert by_id[seeded[1][0]]["units_this_period"] == 3
    assert by_id[seeded[0][0]]["units_this_period"] == 0
    assert by_id[seeded[0][0]]["access"] == "allowed"
    assert by_id[cancelled]["access"] == "denied"
    assert by_id[cancelled]["subscription_status"] == "canceled"
    assert by_id[seeded[0][0]]["active_keys"] == 1
    assert by_id[seeded[0][0]]["email"] == "c0@example.com"

    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        response = await client.get("/admin/v1/customers", params=bad, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
    unknown = await client.get(
        "/admin/v1/customers", params={"starting_after": "cus_nobody"}, headers=ADMIN
    )
    assert unknown.status_code == 404
    typo = await client.get("/admin/v1/customers", params={"starting_afer": "x"}, headers=ADMIN)
    assert typo.status_code == 422 and "starting_afer" in typo.json()["error"]["message"]


async def test_customer_detail_limits_and_key_revocation(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
) -> None:
    ((cus, key),) = await _customers(sessionmaker, stripe_sdk, settings, 1)
    await call_paid(client, key, 4)
    detail = (await client.get(f"/admin/v1/customers/{cus}", headers=ADMIN)).json()
    assert detail["usage"]["customer_id"] == cus and detail["usage"]["units"] == 4
    assert [k["last4"] for k in detail["keys"]] == [key[-4:]]
    assert detail["limits"] == {
        "rate_limit": "100/second",  # METERAPI_RATE_LIMIT, the default
        "monthly_spend_cap": None,
        # 4 units at the session price's 0.5 cents, rounded as an invoice line is
        "spent_this_period": {"amount": 2, "currency": "usd"},
        "alert_thresholds": [50, 80, 100],
        "rate_limit_overridden": False,
        "warning": None,
    }
    assert (await client.get("/admin/v1/customers/cus_nobody", headers=ADMIN)).status_code == 404

    put = await client.put(
        f"/admin/v1/customers/{cus}/limits",
        json={"rate_limit": "50/second", "monthly_spend_cap": {"amount": 5000}},
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    assert put.json()["rate_limit"] == "50/second" and put.json()["rate_limit_overridden"]
    assert put.json()["monthly_spend_cap"] == {"amount": 5000, "currency": "usd"}
    # Omitted fields stay; null rate is "no rate limit"; "default" goes back to the default.
    put = await client.put(
        f"/admin/v1/customers/{cus}/limits", json={"rate_limit": None}, headers=ADMIN
    )
    assert put.json()["rate_limit"] is None and put.json()["monthly_spend_cap"]["amount"] == 5000
    put = await client.put(
        f"/admin/v1/customers/{cus}/limits",
        json={"rate_limit": "default", "monthly_spend_cap": None},
        headers=ADMIN,
    )
    assert put.json()["rate_limit"] == "100/second" and not put.json()["rate_limit_overridden"]
    assert put.json()["monthly_spend_cap"] is None
    for bad in (
        {"rate_limit": "fast"},
        {"rate_limit": "0/second"},
        {"rate_limit": "5/fortnight"},
        {"monthly_spend_cap": {"amount": -1}},
        {"monthly_spend_cap": 5},
        {"other": 1},
    ):
        response = await client.put(f"/admin/v1/customers/{cus}/limits", json=bad, headers=ADMIN)
        assert response.status_code == 422, bad

    key_id = detail["keys"][0]["id"]
    only = await client.delete(f"/admin/v1/customers/{cus}/keys/{key_id}", headers=ADMIN)
    assert only.status_code == 409 and only.json()["error"]["code"] == "last_active_key"
    revoked = await client.delete(
        f"/admin/v1/customers/{cus}/keys/{key_id}?force=true", headers=ADMIN
    )
    assert revoked.status_code == 204
    assert (await client.get("/v1/data", headers={"X-API-Key": key})).status_code == 401
    other = await client.delete(f"/admin/v1/customers/cus_nobody/keys/{key_id}", headers=ADMIN)
    assert other.status_code == 404


async def test_the_operators_revoke_returns_once_every_live_process_applied_it(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
) -> None:
    """As the customer's own revoke does (CONTRACT §3): another process of the service, live and
    behind, holds the answer until it has applied the revocation."""
    ((cus, key),) = await _customers(sessionmaker, stripe_sdk, settings, 1)
    async with session_scope(sessionmaker) as session:
        session.add(ProcessHeartbeat(id="replica-b:1", hostname="replica-b", pid=1, revision=0))
    detail = (await client.get(f"/admin/v1/customers/{cus}", headers=ADMIN)).json()
    path = f"/admin/v1/customers/{cus}/keys/{detail['keys'][0]['id']}?force=true"
    revoking = asyncio.create_task(client.delete(path, headers=ADMIN))
    await asyncio.sleep(0.5)
    assert not revoking.done()
    async with session_scope(sessionmaker) as session:  # replica-b checks in
        revision = (await session.exec(select(CacheRevision.revision))).one()
        other = await session.get(ProcessHeartbeat, "replica-b:1")
        assert other is not None and revision > 0
        other.revision, other.seen_at = revision, utcnow()
    response = await asyncio.wait_for(revoking, 2)
    assert response.status_code == 204
    assert (await client.get("/v1/data", headers={"X-API-Key": key})).status_code == 401


async def test_a_parked_report_is_retried_under_its_identifier_and_counted_once(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    ((cus, key),) = await _customers(sessionmaker, stripe_sdk, settings, 1)
    # Stripe refuses every meter event for now: whatever the reporter sends is parked.
    await emulator_control.inject_fault("error", "/v1/billing/meter_events", status=400, count=None)
    await call_paid(client, key, 6)

    async def listed(status: str) -> list[dict[str, Any]]:
        page = await client.get("/admin/v1/reports", params={"status": status}, headers=ADMIN)
        return [r for r in page.json()["data"] if r["customer_id"] == cus]

    async def all_parked() -> list[dict[str, Any]]:
        parked = await listed("parked")
        return parked if sum(r["units"] for r in parked) == 6 else []

    parked = await eventually(all_parked, what="the reports to be parked")
    assert all(r["status"] == "parked" and r["last_error"] for r in parked)
    assert await stripe_total(emulator_control, cus) == 0
    await emulator_control.clear_faults()

    for report in parked:
        retried = await client.post(f"/admin/v1/reports/{report['id']}/retry", headers=ADMIN)
        assert retried.status_code == 200, retried.text
        assert retried.json()["identifier"] == report["identifier"]
        assert retried.json()["status"] == "pending"

    async def all_sent() -> list[dict[str, Any]]:
        sent = await listed("sent")
        return sent if len(sent) == len(parked) else []

    sent = await eventually(all_sent, what="the retried reports to be sent")
    assert {(r["id"], r["identifier"]) for r in sent} == {
        (r["id"], r["identifier"]) for r in parked
    }
    assert await stripe_total(emulator_control, cus) == 6
    async with sessionmaker() as session:
        assert len((await session.exec(select(UsageReport))).all()) == len(parked)

    report = parked[0]
    again = await client.post(f"/admin/v1/reports/{report['id']}/retry", headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "report_not_parked"
    missing = await client.post("/admin/v1/reports/999999/retry", headers=ADMIN)
    assert missing.status_code == 404


async def test_reports_are_paged_by_status(
    client: httpx.AsyncClient, sessionmaker: Sessionmaker
) -> None:
    ((cus, _),) = [("cus_paging", "")]
    async with sessionmaker() as session:
        from meterapi.models import Customer

        customer = Customer(stripe_customer_id=cus, subscription_status="active")
        session.add(customer)
        await session.flush()
        assert customer.id is not None
        now = utcnow()
        for i in range(5):
            session.add(
                UsageReport(
                    identifier=f"mapi_test_{i}", customer_id=customer.id, stripe_customer_id=cus,
                    event_name="api_requests", value=i + 1, event_at=now - timedelta(minutes=i),
                    status=ReportStatus.PARKED if i % 2 == 0 else ReportStatus.SENT,
                )
            )  # fmt: skip
        await session.commit()
    first = (await client.get("/admin/v1/reports?status=parked&limit=2", headers=ADMIN)).json()
    assert [r["identifier"] for r in first["data"]] == ["mapi_test_0", "mapi_test_2"]
    assert first["has_more"]
    after = first["data"][-1]["id"]
    rest = (
        await client.get(f"/admin/v1/reports?status=parked&starting_after={after}", headers=ADMIN)
    ).json()
    assert [r["identifier"] for r in rest["data"]] == ["mapi_test_4"] and not rest["has_more"]
    sent = (await client.get("/admin/v1/reports?status=sent", headers=ADMIN)).json()
    assert [r["units"] for r in sent["data"]] == [2, 4]
    bad = await client.get("/admin/v1/reports?status=lost", headers=ADMIN)
    assert bad.status_code == 422


async def test_reconciliation_is_zero_after_a_normal_run_and_finds_injected_drift(
    app: FastAPI,
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
) -> None:
    seeded = await _customers(sessionmaker, stripe_sdk, settings, 3)
    for i, (_, key) in enumerate(seeded):
        await call_paid(client, key, 2 + i)
    assert await internals.flush_reports(app) == 0

    rows = (await client.get("/admin/v1/reconciliation", headers=ADMIN)).json()["data"]
    assert [(r["customer_id"], r["ledger_units"], r["stripe_units"], r["drift"]) for r in rows] == [
        (cus, 2 + i, 2 + i, 0) for i, (cus, _) in enumerate(seeded)
    ]

    # Behind the service's back: 7 more units for the second customer only.
    await send_behind_our_back(
        stripe_sdk, stripe_customer_id=seeded[1][0], value=7, identifier=f"rogue-{seeded[1][0]}"
    )
    # Usage not yet reported is pending, not drift.
    await call_paid(client, seeded[2][1], 5)
    rows = (await client.get("/admin/v1/reconciliation", headers=ADMIN)).json()["data"]
    drift = {r["customer_id"]: r["drift"] for r in rows}
    assert drift == {seeded[0][0]: 0, seeded[1][0]: 7, seeded[2][0]: 0}

    # An explicit window that ends before any of it: nothing on either side.
    start = (utcnow() - timedelta(days=3)).isoformat()
    end = (utcnow() - timedelta(days=2)).isoformat()
    rows = (
        await client.get(
            "/admin/v1/reconciliation", params={"start": start, "end": end}, headers=ADMIN
        )
    ).json()["data"]
    assert {(r["ledger_units"], r["stripe_units"], r["drift"]) for r in rows} == {(0, 0, 0)}
    for bad in (
        {"start": start},
        {"start": end, "end": start},
        {"start": "0001-01-01T00:00:00", "end": end},
    ):
        response = await client.get("/admin/v1/reconciliation", params=bad, headers=ADMIN)
        assert response.status_code == 422, bad


async def test_a_failed_stripe_event_is_listed_and_replayed_through_the_same_handler(
    client: httpx.AsyncClient,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    stripe_price: str,
    emulator_control: EmulatorControl,
) -> None:
    evt, sub_id = await failing_checkout_event(stripe_sdk, stripe_price)
    # Stripe cannot be read while the event is handled: it fails and stays unprocessed.
    await emulator_control.inject_fault(
        "error", f"/v1/subscriptions/{sub_id}", method="GET", status=500, count=3
    )
    body, headers = signed(evt, secret=EMULATOR_WEBHOOK_SECRET)
    delivered = await client.post("/webhooks/stripe", content=body, headers=headers)
    assert delivered.status_code >= 500

    failed = (await client.get("/admin/v1/stripe-events?status=failed", headers=ADMIN)).json()
    (listed,) = failed["data"]
    assert listed["id"] == evt["id"] and listed["type"] == "checkout.session.completed"
    assert listed["status"] == "failed" and listed["last_error"] and listed["attempts"] == 1

    replayed = await client.post(f"/admin/v1/stripe-events/{evt['id']}/replay", headers=ADMIN)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"id": evt["id"], "outcome": "processed", "last_error": None}
    customers = (await client.get("/admin/v1/customers", headers=ADMIN)).json()["data"]
    assert [(c["customer_id"], c["access"]) for c in customers] == [
        (evt["data"]["object"]["customer"], "allowed")
    ]
    assert (await client.get("/admin/v1/stripe-events", headers=ADMIN)).json()["data"] == []

    again = await client.post(f"/admin/v1/stripe-events/{evt['id']}/replay", headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "event_already_processed"
    unknown = await client.post("/admin/v1/stripe-events/evt_nothing/replay", headers=ADMIN)
    assert unknown.status_code == 404


async def test_reconciliation_backs_off_when_stripe_rate_limits_and_reports_progress(
    app: FastAPI,
    settings: Settings,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    from meterapi.metering.reconcile import Reconciler

    seeded = await _customers(sessionmaker, stripe_sdk, settings, 4)
    await emulator_control.inject_fault(
        "rate_limit", "/v1/billing/meters/*/event_summaries", count=5
    )
    progress: list[tuple[int, int]] = []
    gateway = StripeGateway(settings)
    try:
        rows = await Reconciler(
            sessionmaker, gateway, concurrency=2, on_progress=lambda *p: progress.append(p)
        ).run()
    finally:
        await gateway.close()
    assert [(r.customer_id, r.drift) for r in rows] == [(cus, 0) for cus, _ in seeded]
    assert progress[-1] == (4, 4) and len(progress) == 4
    # Every one of the five 429s was met (an exhausted rule is dropped) and retried past.
    faults = await emulator_control._call("GET", "/faults")
    assert faults["data"] == []
