"""``GET /dashboard``: one static page and its plain JS and CSS, no build step.

The page talks to the public API (CONTRACT §3) with the customer's key from ``sessionStorage``;
the server holds no dashboard state. The headers keep the page's data on the page: no caching,
no referrer (a Checkout ``session_id`` may be in the URL), scripts and connections to this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from meterapi.dashboard.assets import serve_listed

STATIC = Path(__file__).resolve().parent / "static"

# The only files served: a fixed list, so no request path ever reaches the filesystem.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "limits.js": "text/javascript; charset=utf-8",
    "money.js": "text/javascript; charset=utf-8",
    "messages.js": "text/javascript; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}

router = APIRouter(include_in_schema=False)


def html_page(name: str) -> Response:
    """One of the static HTML pages, with the headers every page carries."""
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/dashboard")
@router.get("/dashboard/")
async def dashboard() -> Response:
    """The customer dashboard: subscribe, the new key once, usage, spending limit, keys, billing."""
    return html_page("index.html")


@router.get("/dashboard/assets/{name}")
async def dashboard_asset(name: str) -> Response:
    return serve_listed(
        STATIC, name, listed=ASSETS, cache_control="no-cache", what="dashboard asset"
    )
