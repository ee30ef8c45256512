"""End to end, offline: subscribe on the dashboard, pay on the emulator's Checkout page, get the
key once, use it, see the unit on the dashboard, revoke it, and see it refused."""

from __future__ import annotations

import re

import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

from playwright.sync_api import Dialog, Locator, Page, expect

from tests.e2e.conftest import LiveService, Screenshots

PHONE = {"width": 375, "height": 812}


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def _key_label(page: Page, key: str) -> str:
    """How the keys table names ``key``: ``prefix…last4`` (never the whole key)."""
    listing = page.locator("#keys-body .mono").all_text_contents()
    matches = [label for label in listing if key.endswith(label.split("…")[1])]
    assert len(matches) == 1, listing
    return matches[0]


def _revoke_button(page: Page, label: str) -> Locator:
    return page.get_by_role("button", name=re.compile(rf"^Revoke key .*{re.escape(label)}$"))


def test_subscribe_pay_use_see_usage_and_revoke(
    page: Page, live_service: LiveService, shots: Screenshots
) -> None:
    page.on("dialog", _accept)  # rotate/revoke ask for confirmation
    page.goto(f"{live_service.url}/dashboard")
    expect(page.get_by_role("heading", name="Subscribe")).to_be_visible()
    shots.take(page, "signed-out")

    # Subscribe → the emulator's hosted Checkout page.
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(re.compile(r"/checkout/cs_"))
    expect(page.get_by_role("button", name="Pay")).to_be_visible()
    shots.take(page, "emulator-checkout")

    # Pay → back on the dashboard, which claims the key and shows it once.
    page.get_by_role("button", name="Pay").click()
    key_value = page.locator("#new-key-value")
    expect(key_value).to_have_text(re.compile(r"^mk_(test|live)_\w+$"))
    key = key_value.text_content() or ""
    expect(page.locator("#new-key")).to_contain_text("will not be shown again")
    assert "session_id" not in page.url and key not in page.url
    assert page.evaluate("sessionStorage.getItem('meterapi.api_key')") == key
    assert page.evaluate("localStorage.length") == 0
    expect(page.locator("#keys-body tr")).to_have_count(1)
    shots.take(page, "key-shown-once")

    # The key works against the metered endpoint: one billable unit.
    with live_service.client() as http:
        assert http.get("/v1/data", headers={"X-API-Key": key}).status_code == 200

    page.get_by_role("button", name="I have saved it").click()
    expect(page.locator("#new-key")).to_be_hidden()
    page.get_by_role("button", name="Reload usage").click()
    expect(page.locator("#usage-units")).to_have_text("1")
    expect(page.locator("#usage-chart .bar:not(.empty)")).to_have_count(1)
    shots.take(page, "usage-one-unit")

    # The only active key cannot be revoked: the page says why.
    first = _key_label(page, key)
    _revoke_button(page, first).click()
    expect(page.locator("#notice")).to_contain_text("only active key")
    shots.take(page, "last-active-key-refused")

    # A second key, then the first one revoked.
    page.get_by_label("New key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    second_value = page.locator("#new-key-value")
    expect(second_value).not_to_have_text(key)
    expect(second_value).to_have_text(re.compile(r"^mk_"))
    second = second_value.text_content() or ""
    expect(page.locator("#keys-body tr")).to_have_count(2)
    shots.take(page, "second-key-created")

    _revoke_button(page, first).click()
    # It was this tab's own key, so the dashboard signs out.
    expect(page.locator("#notice")).to_contain_text("revoked")
    expect(page.get_by_label("Your API key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('meterapi.api_key')") is None
    shots.take(page, "revoked-and-signed-out")

    with live_service.client() as http:
        refused = http.get("/v1/data", headers={"X-API-Key": key})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/data", headers={"X-API-Key": second}).status_code == 200

    # A returning customer signs in by pasting a key; the revoked one shows as such.
    page.get_by_label("Your API key").fill(second)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#keys-body")).to_contain_text("Revoked")
    expect(page.locator("#usage-units")).to_have_text("2")
    shots.take(page, "signed-in-with-second-key")

    # Rotate this tab's key with no grace: the tab carries on with the replacement.
    page.get_by_label("When you rotate a key").select_option("0")
    page.get_by_role("button", name=re.compile(r"^Rotate key laptop ")).click()
    expect(page.locator("#new-key-value")).to_have_text(re.compile(r"^mk_"))
    expect(page.locator("#new-key-value")).not_to_have_text(second)
    rotated = page.locator("#new-key-value").text_content() or ""
    assert page.evaluate("sessionStorage.getItem('meterapi.api_key')") == rotated
    expect(page.locator("#keys-body tr")).to_have_count(3)
    expect(page.locator("#keys-body")).to_contain_text("Expired")
    shots.take(page, "rotated-immediately")
    with live_service.client() as http:
        assert http.get("/v1/data", headers={"X-API-Key": second}).status_code == 401
    page.get_by_role("button", name="I have saved it").click()

    page.set_viewport_size(PHONE)
    expect(page.locator("#usage-units")).to_be_visible()
    shots.take(page, "phone-375px")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 375px"

    # The billing portal (the emulator's), and back: the tab is still signed in.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Open billing portal").click()
    page.wait_for_url(re.compile(r"/portal/"))
    expect(page.get_by_role("heading", name="Your subscriptions")).to_be_visible()
    shots.take(page, "billing-portal")
    page.get_by_role("link", name="Return").click()
    page.wait_for_url(re.compile(r"/dashboard$"))
    expect(page.locator("#usage-units")).to_have_text("2")


def test_a_stale_checkout_link_explains_itself(
    page: Page, live_service: LiveService, shots: Screenshots
) -> None:
    page.goto(f"{live_service.url}/dashboard?session_id=cs_test_does_not_exist")
    notice = page.locator("#notice")
    expect(notice).to_have_class(re.compile("error"))
    expect(notice).to_contain_text("checkout is not known")
    assert "session_id" not in page.url
    expect(page.get_by_role("heading", name="Subscribe")).to_be_visible()
    shots.take(page, "unknown-checkout-session")

    page.get_by_label("Your API key").fill("mk_test_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(notice).to_contain_text("not valid")
    assert page.evaluate("sessionStorage.length") == 0
    shots.take(page, "invalid-key-refused")
