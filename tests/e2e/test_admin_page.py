"""End to end, offline: the operator page in a real browser over the running service.

Two customers subscribe through the emulator's Checkout and use the API; Stripe then refuses a
meter event (parked), an event's handling fails (Stripe unreachable for it), and a meter event
reaches Stripe behind the service's back (drift). The operator signs in with the token, opens a
customer, revokes a key, sets limits, retries the parked report, replays the failed event and
sees the drift highlighted in the reconciliation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

import stripe
from playwright.sync_api import Browser, Dialog, Page, expect

from tests.conftest import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.e2e.conftest import ACTION_TIMEOUT_MS, ADMIN_TOKEN, LiveService, Screenshots
from tests.integration.billing_support import event, signed

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _until(check: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


def _sdk(service: LiveService) -> stripe.StripeClient:
    return stripe.StripeClient(
        EMULATOR_SECRET_KEY,
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        base_addresses={"api": service.emulator.url, "meter_events": service.emulator.url},
    )


def _control(service: LiveService, method: str, endpoint: str, body: Any = None) -> None:
    url = f"{service.emulator.url}/_emulator{endpoint}"
    httpx.request(method, url, json=body, timeout=10).raise_for_status()


def _set_the_scene(
    service: LiveService, http: httpx.Client, sdk: stripe.StripeClient
) -> dict[str, str]:
    """Two paying customers with usage, a parked report, a failed event and drift."""
    key_a, key_b = service.subscribe("ada@example.com"), service.subscribe("bob@example.com")
    assert (
        http.post("/v1/keys", json={"name": "ci"}, headers={"X-API-Key": key_a}).status_code == 201
    )
    for key, n in ((key_a, 3), (key_b, 2)):
        for _ in range(n):
            assert http.get("/v1/data", headers={"X-API-Key": key}).status_code == 200
    customers = http.get("/admin/v1/customers", headers=ADMIN).json()["data"]
    by_email = {c["email"]: c["customer_id"] for c in customers}
    cus_a, cus_b = by_email["ada@example.com"], by_email["bob@example.com"]

    def reported() -> bool:
        usage = [
            http.get(f"/admin/v1/customers/{cus}", headers=ADMIN).json()["usage"]
            for cus in (cus_a, cus_b)
        ]
        return [(u["units"], u["pending_units"]) for u in usage] == [(3, 0), (2, 0)]

    _until(reported, "usage reported")

    # Stripe refuses the next meter events: bob's next calls are parked.
    refuse = {"kind": "error", "path": "/v1/billing/meter_events", "status": 400, "count": None}
    _control(service, "POST", "/faults", refuse)
    for _ in range(4):
        assert http.get("/v1/data", headers={"X-API-Key": key_b}).status_code == 200
    _until(
        lambda: (
            sum(
                r["units"]
                for r in http.get("/admin/v1/reports?status=parked", headers=ADMIN).json()["data"]
            )
            == 4
        ),
        "bob's new usage to be parked",
    )
    _control(service, "DELETE", "/faults")

    # An event whose handling cannot reach Stripe: failed, kept for a replay.
    customer = sdk.v1.customers.create(params={"email": "cyd@example.com"})
    sub = sdk.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": _price_of(sdk)}]}
    )
    unreachable = {"kind": "error", "path": f"/v1/subscriptions/{sub.id}", "method": "GET"}
    _control(service, "POST", "/faults", {**unreachable, "status": 500, "count": 3})
    checkout = {
        "id": f"cs_test_e2e_{sub.id}", "object": "checkout.session", "mode": "subscription",
        "status": "complete", "customer": customer.id, "subscription": sub.id,
        "customer_email": "cyd@example.com",
    }  # fmt: skip
    body, headers = signed(
        event("checkout.session.completed", checkout, created=int(time.time())),
        secret=EMULATOR_WEBHOOK_SECRET,
    )
    assert http.post("/webhooks/stripe", content=body, headers=headers).status_code >= 500

    # Drift: 7 units reach Stripe for ada without the service.
    sdk.v1.billing.meter_events.create(
        params={
            "event_name": "api_requests",
            "identifier": f"rogue-{cus_a}",
            "payload": {"stripe_customer_id": cus_a, "value": "7"},
        }
    )
    return {"a": cus_a, "b": cus_b, "c": customer.id}


def _price_of(sdk: stripe.StripeClient) -> str:
    prices = sdk.v1.prices.list(params={"lookup_keys": ["meterapi_metered_requests"]})
    return prices.data[0].id


@pytest.fixture
def admin_page(admin_service: LiveService, browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield page
    finally:
        context.close()
    assert not [e for e in errors if "status of 4" not in e], errors


def _cells_hold_their_text(page: Page, cells: str) -> None:
    """No cell's text runs out of it into the next column: long ids wrap inside their cell."""
    spilling = page.eval_on_selector_all(
        cells,
        "tds => tds.filter(td => td.scrollWidth > td.clientWidth).map(td => td.textContent)",
    )
    assert spilling == []


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def test_the_operator_page(
    admin_page: Page, admin_service: LiveService, shots: Screenshots
) -> None:
    page = admin_page
    with httpx.Client(base_url=admin_service.url, timeout=10) as http:
        ids = _set_the_scene(admin_service, http, _sdk(admin_service))
    page.on("dialog", _accept)

    page.goto(f"{admin_service.url}/admin")
    expect(page.get_by_role("heading", name="Operator sign-in")).to_be_visible()
    shots.take(page, "signed-out")
    page.get_by_label("Operator token").fill("not-the-token-but-long-enough-0123456789")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#notice")).to_contain_text("not accepted")
    page.get_by_label("Operator token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()

    rows = page.locator("#customers-body tr")
    # The third subscribed without Checkout (the emulator's webhook provisioned it); its
    # checkout.session.completed, which records the email, is the event that failed.
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text=ids["c"])).not_to_contain_text("cyd@example.com")
    ada = rows.filter(has_text=ids["a"])
    expect(ada).to_contain_text("ada@example.com")
    expect(ada).to_contain_text("allowed")
    expect(rows.filter(has_text=ids["b"])).to_contain_text("bob@example.com")
    assert page.evaluate("sessionStorage.getItem('meterapi.admin_token')") == ADMIN_TOKEN
    assert page.evaluate("localStorage.length") == 0 and ADMIN_TOKEN not in page.url
    shots.take(page, "customers")

    # A customer: keys, usage, limits. Revoke one of ada's two keys; set limits.
    ada.get_by_role("button", name="Open").click()
    expect(page.locator("#customer-title")).to_contain_text(ids["a"])
    expect(page.locator("#customer-units")).to_have_text("3")
    keys = page.locator("#customer-keys tr")
    expect(keys).to_have_count(2)
    # By its name cell: "ci" as any text of the row would also match a key label like "…Ci4x".
    ci = keys.filter(has=page.get_by_role("cell", name="ci", exact=True))
    ci.get_by_role("button", name="Revoke").click()
    expect(page.locator("#notice")).to_contain_text("revoked")
    expect(ci).to_contain_text("revoked")
    page.get_by_label("Rate limit").fill("50/second")
    page.get_by_label("Monthly spend cap").fill("5000")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#limit-rate-default")).to_contain_text("own rate limit: 50/second")
    expect(page.locator("#limit-cap")).to_have_value("5000")
    shots.take(page, "customer")

    # The parked report: Retry sends it again under its identifier.
    parked = page.locator("#reports-body tr")
    expect(parked.first).to_contain_text(ids["b"])
    shots.take(page, "parked-and-failed")
    for left in reversed(range(parked.count())):
        parked.first.get_by_role("button", name="Retry").click()
        expect(page.locator("#notice")).to_contain_text("pending again")
        expect(page.locator("#reports-body tr")).to_have_count(max(left, 1))
    expect(page.locator("#reports-body")).to_contain_text("No parked reports.")
    # The empty table's one row spans all its columns.
    expect(page.locator("#reports-body td")).to_have_attribute("colspan", "6")

    # The failed event: Replay handles it; the customer appears.
    failed = page.locator("#events-body tr")
    expect(failed).to_contain_text("checkout.session.completed")
    failed.get_by_role("button", name="Replay").click()
    expect(page.locator("#notice")).to_contain_text("processed")
    expect(page.locator("#events-body")).to_contain_text("No failed events.")
    expect(page.locator("#customers-body tr").filter(has_text=ids["c"])).to_contain_text(
        "cyd@example.com"
    )

    # Reconciliation: ada drifts by the 7 units sent behind the service's back.
    def bob_counted() -> bool:
        with httpx.Client(base_url=admin_service.url, timeout=30) as http:
            rows = http.get("/admin/v1/reconciliation", headers=ADMIN).json()["data"]
        return any(r["customer_id"] == ids["b"] and r["stripe_units"] == 6 for r in rows)

    _until(bob_counted, "the retried usage to reach Stripe")
    page.get_by_role("button", name="Reconcile now").click()
    drifting = page.locator("#reconcile-body tr.drift")
    expect(drifting).to_have_count(1)
    expect(drifting).to_contain_text(ids["a"])
    expect(drifting).to_contain_text("+7")
    expect(page.locator("#reconcile-summary")).to_contain_text(
        "3 customer(s) reconciled; 1 drifting"
    )
    shots.take(page, "reconciliation")

    # Outbound webhooks: the receiver refuses every connection, so the customers' and keys'
    # events wait (each customer's first one tried and refused, the rest queued behind it, in
    # order); Retry sends one again now under the same webhook-id.
    def undelivered() -> list[dict[str, Any]]:
        with httpx.Client(base_url=admin_service.url, timeout=10) as http:
            rows: list[dict[str, Any]] = http.get(
                "/admin/v1/webhooks/outbound?limit=100", headers=ADMIN
            ).json()["data"]
        tried = {r["customer_id"] for r in rows if r["attempts"] >= 1 and r["last_error"]}
        return rows if rows and tried == {r["customer_id"] for r in rows} else []

    waiting = _until(undelivered, "refused deliveries of the outbound events")
    assert {ids["a"], ids["b"], ids["c"]} <= {r["customer_id"] for r in waiting}
    page.locator("#reload-outbound").click()
    outbound = page.locator("#outbound-body tr")
    expect(outbound).to_have_count(len(waiting))
    tried = next(r for r in waiting if r["attempts"] >= 1)
    shown = outbound.filter(has_text=tried["id"])
    expect(shown).to_contain_text(tried["type"])
    expect(shown).to_contain_text(tried["customer_id"])
    expect(shown).to_contain_text("pending")
    expect(shown.locator("td.error-text")).not_to_have_text("-")
    key_event = outbound.filter(has_text="key.created").filter(has_text=ids["a"]).first
    expect(key_event).to_be_visible()
    shots.take(page, "outbound-webhooks")
    _cells_hold_their_text(page, "#outbound-body td")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    _cells_hold_their_text(page, "#outbound-body td")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("#outbound-title").scroll_into_view_if_needed()
    shots.take(page, "outbound-webhooks-390px", full_page=False)
    page.set_viewport_size({"width": 1280, "height": 900})
    retried = key_event.locator("td").first.inner_text()
    key_event.get_by_role("button", name="Retry").click()
    expect(page.locator("#notice")).to_contain_text(f"Event {retried} is pending again")
    with httpx.Client(base_url=admin_service.url, timeout=10) as http:
        after = http.get("/admin/v1/webhooks/outbound?limit=100", headers=ADMIN).json()["data"]
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in waiting)  # no new event
    assert [r["status"] for r in after if r["id"] == retried] == ["pending"]

    # The token survives a reload of the tab, and signing out forgets it.
    page.reload()
    expect(page.locator("#customers-body tr")).to_have_count(3)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Operator sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('meterapi.admin_token')") is None
    assert re.search(r"/admin$", page.url)
