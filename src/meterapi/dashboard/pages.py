"""``GET /dashboard``: one static page and its plain JS and CSS, no build step.

Every page is ``static/frame.html`` (the head, the top bar, the notice) around the page's own
``<main>`` content, put together once per process: a fix to the frame reaches every page. The page
talks to the public API (CONTRACT §3) with the customer's key from ``sessionStorage``;
the server holds no dashboard state. The headers keep the page's data on the page: no caching,
no referrer (a Checkout ``session_id`` may be in the URL), scripts and connections to this origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import Response

from meterapi.dashboard.assets import serve_listed

STATIC = Path(__file__).resolve().parent / "static"

# The only files served: a fixed list, so no request path ever reaches the filesystem.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "keys.js": "text/javascript; charset=utf-8",
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


@dataclass(frozen=True)
class Page:
    """An HTML page: what fills ``frame.html``'s slots."""

    main: str  # the file under static/ that holds the page's <main> content
    title: str
    subtitle: str  # beside "meterapi" in the top bar
    nav_label: str  # the top bar's navigation landmark, for screen readers
    assets: tuple[str, ...]  # the page's own stylesheets (.css) and module scripts (.js)


def _asset_tag(url: str) -> str:
    if url.endswith(".css"):
        return f'  <link rel="stylesheet" href="{escape(url)}">'
    return f'  <script type="module" src="{escape(url)}"></script>'


@cache
def render(page: Page) -> str:
    """The page's HTML: its ``<main>`` content inside the frame every page shares."""
    frame = Template((STATIC / "frame.html").read_text(encoding="utf-8"))
    return frame.substitute(
        title=escape(page.title),
        subtitle=escape(page.subtitle),
        nav_label=escape(page.nav_label),
        assets="\n".join(_asset_tag(url) for url in page.assets),
        main=(STATIC / page.main).read_text(encoding="utf-8").rstrip("\n"),
    )


def html_page(page: Page) -> Response:
    """A page, with the headers every page carries."""
    return Response(render(page), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


DASHBOARD = Page(
    main="dashboard.html",
    title="Dashboard",
    subtitle="dashboard",
    nav_label="Account",
    assets=("/dashboard/assets/app.js",),
)


@router.get("/dashboard")
@router.get("/dashboard/")
async def dashboard() -> Response:
    """The customer dashboard: subscribe, the new key once, usage, spending limit, keys, billing."""
    return html_page(DASHBOARD)


@router.get("/dashboard/assets/{name}")
async def dashboard_asset(name: str) -> Response:
    return serve_listed(
        STATIC, name, listed=ASSETS, cache_control="no-cache", what="dashboard asset"
    )
