"""Operations endpoints and the one error shape."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from meterapi.app import create_app
from tests.conftest import make_settings


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "sqlite+aiosqlite:///{missing}/no/such/dir/x.db",
    ],
    ids=["postgres-port-closed", "sqlite-no-directory"],
)
async def test_readyz_is_503_when_database_does_not_answer(url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(url.format(missing=tmp_path)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/readyz")
            health = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert health.status_code == 200


async def test_unknown_route_has_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert set(response.json()["error"]) == {"code", "message"}


async def test_wrong_method_has_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_a_405_allows_every_method_the_path_serves(client: httpx.AsyncClient) -> None:
    # GET and POST /v1/keys are two routes; Allow names both (RFC 9110), not the first's alone.
    for method, path, allow in (
        ("PATCH", "/v1/keys", "GET, POST"),
        ("GET", "/v1/keys/key_x", "DELETE"),
        ("DELETE", "/v1/limits", "GET, PUT"),
        ("DELETE", "/healthz", "GET"),
    ):
        response = await client.request(method, path)
        assert (response.status_code, response.headers["allow"]) == (405, allow), path
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_oversized_body_is_413(db_url: str) -> None:
    app = create_app(make_settings(db_url, max_body_bytes=16))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/healthz", content=b"x" * 17)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_body_that_is_not_json_is_a_validation_error(client: httpx.AsyncClient) -> None:
    for body in (b"\xff\xfe\x00garbage", b'{"email": '):
        response = await client.post(
            "/v1/checkout", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"


async def test_an_unreachable_database_is_503_not_500(tmp_path: Path) -> None:
    from tests.integration.keys_support import headers

    app = create_app(make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            from meterapi.keys import format as key_format

            response = await client.get(
                "/v1/keys", headers=headers(key_format.generate(live=False))
            )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"


async def test_the_openapi_document_describes_the_error_shape(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    validation = schemas["HTTPValidationError"]
    assert validation["required"] == ["error"]
    assert validation["properties"]["error"]["required"] == ["code", "message"]
    assert "ValidationError" not in schemas
