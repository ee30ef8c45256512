"""The dashboard's way out of every failed step, in a real browser: a claim that failed can be
tried again (same session, same claim token), an expired checkout says so and offers a new one, a
cancelled checkout comes back with a notice, and a bad email is named as such."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

from playwright.sync_api import Page, expect

from tests.conftest import EMULATOR_SECRET_KEY
from tests.e2e.conftest import LiveService, Screenshots

CHECKOUT_PAGE = re.compile(r"/checkout/(cs_\w+)")


@pytest.fixture
def emulator_http(live_service: LiveService) -> Iterator[httpx.Client]:
    """The emulator's own API (as the operator's Stripe account) and its control endpoints."""
    headers = {"Authorization": f"Bearer {EMULATOR_SECRET_KEY}"}
    with httpx.Client(base_url=live_service.emulator.url, headers=headers, timeout=10) as http:
        try:
            yield http
        finally:
            http.delete("/_emulator/faults")


def _to_checkout(page: Page, live_service: LiveService, email: str = "") -> str:
    """From the signed-out dashboard to the emulator's hosted Checkout page; its session id."""
    page.goto(f"{live_service.url}/dashboard")
    if email:
        page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(CHECKOUT_PAGE)
    found = CHECKOUT_PAGE.search(page.url)
    assert found is not None
    return found.group(1)


def _stored_checkout(page: Page) -> dict[str, str] | None:
    saved = page.evaluate("sessionStorage.getItem('meterapi.checkout')")
    return None if saved is None else dict(json.loads(saved))


@pytest.mark.console_allows("status of 503")  # the claim that fails while Stripe is down
def test_a_failed_claim_can_be_tried_again(
    page: Page, live_service: LiveService, emulator_http: httpx.Client, shots: Screenshots
) -> None:
    session_id = _to_checkout(page, live_service, "retry@example.com")

    # Stripe is down when the buyer comes back, and its webhook has not arrived: the claim
    # must ask Stripe, and cannot.
    live_service.emulator.set_webhook(None)
    fault = {"kind": "error", "path": "/v1/checkout/sessions/*", "method": "GET", "count": None}
    assert emulator_http.post("/_emulator/faults", json=fault).status_code == 200
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r"/dashboard"))
    notice = page.locator("#notice")
    expect(notice).to_have_class(re.compile("error"))
    expect(notice).to_contain_text("payment provider")
    retry = page.get_by_role("button", name="Try again")
    expect(retry).to_be_visible()
    assert "session_id" not in page.url
    # The session and its claim token wait in this tab (sessionStorage, never the URL).
    stored = _stored_checkout(page)
    assert stored is not None and stored["id"] == session_id and stored["claim_token"]
    assert stored["claim_token"] not in page.url
    shots.take(page, "claim-failed-try-again")

    emulator_http.delete("/_emulator/faults")
    retry.click()
    key_value = page.locator("#new-key-value")
    expect(key_value).to_have_text(re.compile(r"^mk_(test|live)_\w+$"))
    expect(retry).to_be_hidden()
    assert _stored_checkout(page) is None  # claimed: the token is of no further use
    with live_service.client() as http:
        key = key_value.text_content() or ""
        assert http.get("/v1/data", headers={"X-API-Key": key}).status_code == 200
    shots.take(page, "claimed-after-try-again")


def test_an_expired_checkout_says_so_and_offers_a_new_one(
    page: Page, live_service: LiveService, emulator_http: httpx.Client, shots: Screenshots
) -> None:
    session_id = _to_checkout(page, live_service, "late@example.com")
    expired = emulator_http.post(f"/v1/checkout/sessions/{session_id}/expire")
    assert expired.status_code == 200, expired.text

    # The buyer comes back to the dashboard with that session (a saved link, a stale tab).
    page.goto(f"{live_service.url}/dashboard?session_id={session_id}")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("expired")
    expect(notice).not_to_contain_text("reload")
    restart = page.get_by_role("button", name="Start a new checkout")
    expect(restart).to_be_visible()
    expect(page.get_by_role("button", name="Try again")).to_be_hidden()
    shots.take(page, "checkout-expired")

    restart.click()
    page.wait_for_url(CHECKOUT_PAGE)
    found = CHECKOUT_PAGE.search(page.url)
    assert found is not None and found.group(1) != session_id
    expect(page.get_by_role("button", name="Pay")).to_be_visible()


def test_a_cancelled_checkout_comes_back_with_a_notice(
    page: Page, live_service: LiveService, shots: Screenshots
) -> None:
    _to_checkout(page, live_service)
    page.get_by_role("link", name=re.compile("cancel", re.IGNORECASE)).click()
    page.wait_for_url(re.compile(r"/dashboard"))
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Checkout cancelled")
    expect(notice).to_contain_text("Nothing was charged")
    assert "checkout=" not in page.url
    assert _stored_checkout(page) is None
    expect(page.get_by_role("button", name="Subscribe")).to_be_visible()
    shots.take(page, "checkout-cancelled")


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two words@example.com"])
def test_an_invalid_email_is_named_plainly(
    page: Page, live_service: LiveService, shots: Screenshots, email: str
) -> None:
    page.goto(f"{live_service.url}/dashboard")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Subscribe").click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Enter a valid email address")
    text = notice.text_content() or ""
    assert "pattern" not in text and "^" not in text, text
    assert "/dashboard" in page.url and "/checkout/" not in page.url
    expect(page.get_by_label("Email")).to_be_focused()
    shots.take(page, "invalid-email")


def test_the_service_refusing_an_email_is_worded_the_same(
    page: Page, live_service: LiveService
) -> None:
    """A value the browser's check lets through but the service refuses (a control character)."""
    page.goto(f"{live_service.url}/dashboard")
    page.get_by_label("Email").fill("x")
    page.evaluate("document.getElementById('subscribe-email').value = 'a\\u0001b@example.com'")
    page.get_by_role("button", name="Subscribe").click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Enter a valid email address")
    assert "pattern" not in (notice.text_content() or "")
