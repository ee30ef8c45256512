"""The dashboard's "Spending limit" card in a real browser: set a cap in dollars, see the spend
against it, the alert banner as real paid calls cross 50%, 80% and 100%, change and clear it;
bad input explained; read-only for a rotated key; usable at phone width."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

from playwright.sync_api import Page, expect

from meterapi.stripe_emulator import EmulatorServer
from tests.e2e.conftest import LiveService, Screenshots, _free_socket, _live_settings, serving

PHONE = {"width": 390, "height": 844}
# The suite's price is 0.5 cents a unit (tests/conftest.py), so a 10-cent cap is 20 calls.
CAP_DOLLARS = "0.10"
CAP_CENTS = 10


@pytest.fixture
def limited_service(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> Iterator[LiveService]:
    """``live_service`` with a default rate limit, as an operator would run it."""
    sock = _free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = _live_settings(db_url, stripe_emulator, stripe_price, url, rate_limit="100/second")
    with serving(settings, stripe_emulator, sock) as service:
        yield service


def _sign_in(page: Page, service: LiveService, key: str) -> None:
    page.goto(f"{service.url}/dashboard")
    page.get_by_label("Your API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Spending limit")).to_be_visible()


def _server_limits(service: LiveService, key: str) -> dict[str, Any]:
    with service.client() as http:
        response = http.get("/v1/limits", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _spend(service: LiveService, key: str, calls: int) -> list[int]:
    """``calls`` paid calls with ``key``: their status codes."""
    with service.client() as http:
        return [http.get("/v1/data", headers={"X-API-Key": key}).status_code for _ in range(calls)]


def _set_limit(page: Page, text: str) -> None:
    page.get_by_label("Monthly limit in USD").fill(text)
    page.locator("#limits-save").click()


def test_set_watch_change_and_clear_the_spending_limit(
    page: Page, limited_service: LiveService, shots: Screenshots
) -> None:
    service = limited_service
    key = service.subscribe("limits@example.com")
    _sign_in(page, service, key)
    expect(page.locator("#limits-cap")).to_have_text("No limit")
    expect(page.locator("#limits-spent")).to_have_text("$0.00")
    expect(page.locator("#limits-rate")).to_have_text("100/second")
    expect(page.locator("#limits-bar")).to_be_hidden()
    expect(page.locator("#spend-banner")).to_be_hidden()
    expect(page.locator("#limits-clear")).to_be_hidden()
    shots.take(page, "no-limit")

    # Bad input is explained next to the field, and nothing is sent.
    for typed, says in [
        ("", "Enter the cap in USD"),
        ("ten", "is not an amount"),
        ("-5", "cannot be negative"),
        ("1.005", "at most 2 decimal places"),
        ("1e3", "is not an amount"),
        ("99999999999999", "larger than the service accepts"),
    ]:
        _set_limit(page, typed)
        expect(page.locator("#limits-error")).to_contain_text(says)
        expect(page.get_by_label("Monthly limit in USD")).to_have_attribute("aria-invalid", "true")
    shots.take(page, "bad-input")
    assert _server_limits(service, key)["monthly_spend_cap"] is None
    page.get_by_label("Monthly limit in USD").fill("1")
    expect(page.locator("#limits-error")).to_be_hidden()  # typing clears the message

    # A cap in dollars is sent in cents; the numbers and the bar follow.
    _set_limit(page, CAP_DOLLARS)
    expect(page.locator("#notice")).to_contain_text("Spending limit set to $0.10")
    expect(page.locator("#limits-cap")).to_have_text("$0.10")
    expect(page.locator("#limits-bar")).to_be_visible()
    expect(page.locator("#limits-bar")).to_have_attribute("aria-valuenow", "0")
    expect(page.locator("#limits-summary")).to_have_text("$0.00 of $0.10 spent (0%).")
    expect(page.locator("#limits-clear")).to_be_visible()
    expect(page.locator("#limits-error")).to_be_hidden()
    assert _server_limits(service, key)["monthly_spend_cap"] == {
        "amount": CAP_CENTS,
        "currency": "usd",
    }
    shots.take(page, "limit-set")

    # Half the cap spent by real paid calls: the banner says 50%.
    assert _spend(service, key, 10) == [200] * 10  # 10 units at 0.5 cents: 5 cents
    page.get_by_role("button", name="Reload usage").click()
    expect(page.locator("#usage-units")).to_have_text("10")
    expect(page.locator("#limits-spent")).to_have_text("$0.05")
    expect(page.locator("#limits-bar")).to_have_attribute("aria-valuenow", "50")
    banner = page.locator("#spend-banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("data-threshold", "50")
    expect(banner).to_contain_text("50% of your monthly spending limit: $0.05 of $0.10")
    shots.take(page, "banner-50")

    assert _spend(service, key, 6) == [200] * 6  # 8 cents
    page.get_by_role("button", name="Reload usage").click()
    expect(banner).to_have_attribute("data-threshold", "80")
    expect(banner).to_contain_text("80%")

    # Up to the cap: once it is reached, paid calls may be refused (402).
    statuses = _spend(service, key, 6)
    assert set(statuses) <= {200, 402}, statuses
    page.get_by_role("button", name="Reload usage").click()
    expect(banner).to_have_attribute("data-threshold", "100")
    expect(banner).to_contain_text("reached your monthly spending limit of $0.10")
    expect(banner).to_contain_text("refused until the next billing period")
    expect(page.locator("#limits-bar")).to_have_attribute("aria-valuenow", "100")
    shots.take(page, "banner-100")

    # A higher cap: the banner goes, the bar shrinks; grouped digits are understood.
    _set_limit(page, "1,000.5")
    expect(page.locator("#limits-cap")).to_have_text("$1,000.50")
    expect(banner).to_be_hidden()
    expect(page.locator("#limits-bar")).to_have_attribute("aria-valuenow", "0")
    assert _server_limits(service, key)["monthly_spend_cap"]["amount"] == 100_050

    page.set_viewport_size(PHONE)
    expect(page.locator("#limits-cap")).to_be_visible()
    shots.take(page, "phone-390px")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 390px"

    # Cleared: no cap, no bar, no banner, and the server agrees.
    page.get_by_role("button", name="Remove limit").click()
    expect(page.locator("#notice")).to_contain_text("Spending limit removed")
    expect(page.locator("#limits-cap")).to_have_text("No limit")
    expect(page.locator("#limits-bar")).to_be_hidden()
    expect(page.locator("#limits-clear")).to_be_hidden()
    assert _server_limits(service, key)["monthly_spend_cap"] is None
    shots.take(page, "cleared-phone")


def test_a_rotated_key_sees_the_limit_read_only(
    page: Page, live_service: LiveService, shots: Screenshots
) -> None:
    key = live_service.subscribe("rotated@example.com")
    with live_service.client() as http:
        own = {"X-API-Key": key}
        assert http.put(
            "/v1/limits", headers=own, json={"monthly_spend_cap": {"amount": 2500}}
        ).is_success
        [listed] = http.get("/v1/keys", headers=own).json()["data"]
        rotated = http.post(f"/v1/keys/{listed['id']}/rotate", headers=own)
        assert rotated.status_code == 201, rotated.text

    _sign_in(page, live_service, key)
    expect(page.locator("#limits-cap")).to_have_text("$25.00")
    expect(page.locator("#limits-rate")).to_have_text("No rate limit")
    expect(page.locator("#limits-bar")).to_be_visible()
    expect(page.locator("#limits-readonly")).to_contain_text("rotated key")
    expect(page.locator("#limits-form")).to_be_hidden()
    expect(page.get_by_label("Monthly limit in USD")).to_be_hidden()
    shots.take(page, "rotated-read-only")

    # Its replacement may change the limit.
    page.get_by_role("button", name="Sign out").click()
    _sign_in(page, live_service, rotated.json()["api_key"])
    expect(page.locator("#limits-form")).to_be_visible()
    expect(page.locator("#limits-readonly")).to_be_hidden()
    expect(page.get_by_role("button", name="Change limit")).to_be_visible()
