"""The /docs explorer, served without a CDN: Authorize with a key, "Try it out" on /v1/data."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import LiveService, Screenshots


def test_authorize_and_try_v1_data(
    page: Page, live_service: LiveService, shots: Screenshots
) -> None:
    key = live_service.subscribe()
    offsite: list[str] = []
    page.on(
        "request",
        lambda r: offsite.append(r.url) if not r.url.startswith(live_service.url) else None,
    )

    page.goto(f"{live_service.url}/docs")
    authorize = page.locator(".swagger-ui .auth-wrapper button.authorize")
    expect(authorize).to_be_visible()
    operation = page.locator(".opblock-get", has_text="/v1/data")
    expect(operation).to_be_visible()
    shots.take(page, "explorer")

    authorize.click()
    scheme = page.locator(".auth-container", has_text="X-API-Key")
    scheme.locator("input").fill(key)
    shots.take(page, "authorize-dialog", full_page=False)
    scheme.get_by_role("button", name="Authorize").click()
    expect(scheme.get_by_role("button", name="Logout")).to_be_visible()
    page.get_by_role("button", name="Close").first.click()

    operation.locator(".opblock-summary").first.click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table .response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"))
    expect(operation.locator(".curl-command, .curl")).to_contain_text("X-API-Key")
    operation.scroll_into_view_if_needed()
    shots.take(page, "try-it-out-200")

    assert offsite == [], f"/docs fetched from outside this host: {offsite}"
    assert page.evaluate("localStorage.length") == 0  # the key was not persisted
