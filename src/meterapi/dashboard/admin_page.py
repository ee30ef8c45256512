"""``GET /admin``: the operator page, static like the dashboard, over the operator API.

The token is pasted once and kept in the tab's ``sessionStorage``; the server holds no page
state, and the page itself reveals nothing without the token (every figure comes from
``/admin/v1``). Same headers as the dashboard: no caching, no referrer, no framing, scripts and
connections to this origin only.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from meterapi.dashboard.assets import serve_listed
from meterapi.dashboard.pages import STATIC, Page, html_page

ASSETS = {
    "admin.css": "text/css; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
}

ADMIN = Page(
    main="admin.html",
    title="Operator",
    subtitle="operator",
    nav_label="Operator",
    assets=("/admin/assets/admin.css", "/admin/assets/admin.js"),
)

router = APIRouter(include_in_schema=False)


@router.get("/admin")
async def admin_page() -> Response:
    """Customers, keys, limits, parked reports, failed Stripe events, reconciliation."""
    return html_page(ADMIN)


@router.get("/admin/assets/{name}")
async def admin_asset(name: str) -> Response:
    return serve_listed(STATIC, name, listed=ASSETS, cache_control="no-cache", what="admin asset")
