"""The /docs explorer, served without a CDN: Authorize with a key, "Try it out" on /v1/data."""

from __future__ import annotations

import re

import pytest

pytest.importorskip(
    "playwright", reason="the playwright package is missing: pip install -e '.[dev]'"
)

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
    # Swagger UI's buttons carry aria-labels ("Apply credentials", ...): find them by their text.
    scheme.locator("button", has_text="Authorize").click()
    expect(scheme.locator("button", has_text="Logout")).to_be_visible()
    page.locator(".modal-ux button", has_text="Close").first.click()
    expect(page.locator(".modal-ux")).to_have_count(0)

    operation.locator(".opblock-summary").first.click()
    operation.locator("button", has_text="Try it out").click()
    operation.locator("button", has_text="Execute").click()
    status = operation.locator(".live-responses-table tr.response td.response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"))
    expect(operation.locator(".curl-command")).to_contain_text("X-API-Key")
    operation.locator(".responses-inner").first.scroll_into_view_if_needed()
    shots.take(page, "try-it-out-200", full_page=False)

    assert offsite == [], f"/docs fetched from outside this host: {offsite}"
    assert page.evaluate("localStorage.length") == 0  # the key was not persisted
