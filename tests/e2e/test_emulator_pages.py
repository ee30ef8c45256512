"""The emulator's hosted pages (checkout, portal, expired) in a real browser, at phone width."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

import stripe
from playwright.sync_api import Browser, Page, expect

from meterapi.stripe_emulator import EmulatorServer
from tests.e2e.conftest import ACTION_TIMEOUT_MS, Screenshots

PHONE = {"width": 390, "height": 844}
# The gap between the text of neighbouring cells in each row of the first table, in pixels.
CELL_GAPS = """() => [...document.querySelectorAll('table tr')].map(row => {
  const cells = [...row.children].filter(c => c.textContent.trim());
  const edges = cells.map(c => { const r = document.createRange(); r.selectNodeContents(c);
    const b = r.getBoundingClientRect(); return [b.left, b.right]; });
  return edges.slice(1).map((e, i) => e[0] - edges[i][1]);
}).flat()"""


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[stripe.StripeClient]:
    http = stripe.HTTPXClient(allow_sync_methods=True)
    yield stripe.StripeClient(
        "sk_test_pages",
        http_client=http,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
    )
    http.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status == 404 else None)
    yield page, failed
    context.close()


def _metered_price(client: stripe.StripeClient) -> str:
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "API requests",
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
        }
    )
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": "1",
            "product_data": {"name": "API access"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    return price.id


def _fits_the_phone(page: Page) -> None:
    viewport = page.locator("meta[name=viewport]")
    expect(viewport).to_have_attribute("content", "width=device-width, initial-scale=1")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_hosted_pages_on_a_phone(
    phone: tuple[Page, list[str]],
    client: stripe.StripeClient,
    emulator: EmulatorServer,
    shots: Screenshots,
) -> None:
    page, not_found = phone
    price = _metered_price(client)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price}],
            "success_url": f"{emulator.url}/_emulator/health",
        }
    )
    assert session.url
    page.goto(session.url)
    _fits_the_phone(page)
    terms = page.locator("table td").nth(1)
    expect(terms).to_contain_text("per unit of usage")
    expect(terms).not_to_contain_text("/ month")
    shots.take(page, "checkout")
    page.fill("input[name=email]", "phone@example.com")
    page.click("button[type=submit]")
    page.wait_for_url(f"{emulator.url}/_emulator/health")

    done = client.v1.checkout.sessions.retrieve(session.id)
    assert isinstance(done.customer, str)
    preview = client.v1.invoices.create_preview(params={"customer": done.customer})
    line = preview.lines.data[0].description or ""
    assert "per unit" in line and "/ month" not in line, line

    portal = client.v1.billing_portal.sessions.create(
        params={"customer": done.customer, "return_url": f"{emulator.url}/_emulator/health"}
    )
    page.goto(portal.url)
    _fits_the_phone(page)
    expect(page.locator("table th").first).to_have_text("Subscription")
    gaps = page.evaluate(CELL_GAPS)
    assert gaps and min(gaps) >= 8, gaps  # the cells' text does not run together
    shots.take(page, "portal")

    expiring = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price}],
            "success_url": f"{emulator.url}/_emulator/health",
        }
    )
    assert expiring.url
    client.v1.checkout.sessions.expire(expiring.id)
    answer = page.goto(expiring.url)
    assert answer is not None and answer.status == 410
    _fits_the_phone(page)
    expect(page.locator("h1")).to_have_text("Checkout expired")
    shots.take(page, "expired")

    icon = page.request.get(f"{emulator.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/")
    assert not_found == []
