"""The dashboard and /docs as served (no browser), and CORS for a dashboard on another origin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from meterapi.app import create_app
from meterapi.dashboard import pages
from tests.conftest import make_settings

DASHBOARD_ORIGIN = "https://dashboard.example.com"


async def test_dashboard_page_is_served_with_strict_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    html = response.text
    labels = ('<label for="subscribe-email"', '<label for="sign-in-key"', 'aria-live="polite"')
    for needle in labels:
        assert needle in html
    # The page is the same for everyone: it must not carry data or a key.
    assert "mk_live_" not in html and "mk_test_" not in html


async def test_dashboard_ignores_the_checkout_session_on_the_server(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/dashboard", params={"session_id": "cs_test_123"})
    assert response.status_code == 200
    assert "cs_test_123" not in response.text


@pytest.mark.parametrize("name", sorted(pages.ASSETS))
async def test_every_dashboard_asset_is_served(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/dashboard/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == pages.ASSETS[name]
    assert response.content


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/assets/frame.html",
        "/dashboard/assets/..%2Fpages.py",
        "/dashboard/assets/../pages.py",
        "/dashboard/assets/nope.js",
    ],
)
async def test_only_listed_assets_are_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_never_stores_the_key_outside_session_storage() -> None:
    scripts = "".join((pages.STATIC / name).read_text() for name in pages.ASSETS)
    assert "localStorage" not in scripts
    assert "innerHTML" not in scripts and "outerHTML" not in scripts
    assert "console." not in scripts
    assert "sessionStorage" in scripts


async def test_docs_serve_swagger_ui_from_this_host(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "/docs/assets/swagger-ui.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN at all
    for asset, kind in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ]:
        response = await client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(kind)
    missing = await client.get("/docs/assets/index.html")
    assert missing.status_code == 404


async def test_docs_and_dashboard_stay_out_of_the_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/dashboard"))]


@pytest.fixture
async def cors_client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(db_url, cors_origins=DASHBOARD_ORIGIN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key",
    }


async def test_preflight_from_an_allowed_origin_gets_cors_headers(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options("/v1/usage", headers=_preflight(DASHBOARD_ORIGIN))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == DASHBOARD_ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    # A key is a header, not a cookie: the browser is never asked to send credentials.
    assert "access-control-allow-credentials" not in response.headers


async def test_preflight_from_another_origin_gets_none(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.options(
        "/v1/usage", headers=_preflight("https://evil.example.net")
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_simple_request_from_an_allowed_origin_is_readable(
    cors_client: httpx.AsyncClient,
) -> None:
    allowed = await cors_client.get("/healthz", headers={"Origin": DASHBOARD_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == DASHBOARD_ORIGIN
    other = await cors_client.get("/healthz", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_without_configured_origins(client: httpx.AsyncClient) -> None:
    response = await client.options("/v1/usage", headers=_preflight(DASHBOARD_ORIGIN))
    assert "access-control-allow-origin" not in response.headers


async def test_the_explorer_can_authorize_v1_data_with_an_api_key(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    header_schemes = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "apiKey" and scheme["in"] == "header" and scheme["name"] == "X-API-Key"
    ]
    assert header_schemes, schemes
    security = schema["paths"]["/v1/data"]["get"]["security"]
    assert {header_schemes[0]: []} in security
