"""``GET /docs``: Swagger UI served from this service, not from a CDN.

FastAPI's default explorer loads Swagger UI from the internet; a self-hosted service (or one
behind a firewall) cannot count on that. The ``swagger-ui-bundle-v2`` package ships Swagger UI 5
(which reads OpenAPI 3.1, what FastAPI emits), and its files are served here. Authorization is
kept in the page only (no ``persistAuthorization``): a key typed into Authorize never reaches
``localStorage``.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from meterapi.dashboard.assets import serve_listed

SWAGGER_UI = Path(str(swagger_ui_bundle.swagger_ui_path))
ASSET_PREFIX = "/docs/assets"

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def explorer(request: Request) -> HTMLResponse:
    """The OpenAPI explorer: Authorize with an API key, then "Try it out"."""
    openapi_url = request.app.openapi_url or "/openapi.json"
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - API explorer",
        swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSET_PREFIX}/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": False, "displayRequestDuration": True},
    )
    # It is where customers paste keys: no other site may frame it (clickjacking).
    page.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    page.headers["X-Frame-Options"] = "DENY"
    page.headers["Referrer-Policy"] = "no-referrer"
    page.headers["Cache-Control"] = "no-store"
    return page


@router.get(ASSET_PREFIX + "/{name}")
async def explorer_asset(name: str) -> Response:
    return serve_listed(
        SWAGGER_UI,
        name,
        listed=ASSETS,
        cache_control="public, max-age=86400",
        what="explorer asset",
    )
